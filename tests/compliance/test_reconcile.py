from __future__ import annotations

from pathlib import Path

from compliance import AuditLog, Event, load_or_create_signing_key, reconcile

from .conftest import STUDY, message


def test_matching_logs_reconcile(federation) -> None:
    rec = reconcile(federation.silo_logs["silo-a"], federation.coordinator_log)
    assert rec.ok and rec.matched == 6  # 3 updates up, 3 global models down
    assert (rec.silo, rec.coordinator) == ("silo-a", "coordinator")


def test_a_message_the_coordinator_never_logged_is_flagged(federation) -> None:
    rec = reconcile(federation.silo_logs["silo-b"], federation.coordinator_log, study=STUDY)
    assert not rec.ok and rec.matched == 5 and rec.only_at_coordinator == []
    [lost] = rec.only_at_silo
    assert lost.event == Event.MESSAGE_SENT and lost.fields["round"] == 3
    assert rec.describe(lost).endswith("sent by silo-b; coordinator logged no receipt")


def test_a_message_the_silo_never_sent_is_flagged(federation, tmp_path: Path) -> None:
    coord = AuditLog.open(federation.coordinator_log, node="coordinator", role="coordinator",
                          signing_key=load_or_create_signing_key(federation.keys["coordinator"]))
    with coord:
        coord.append(Event.MESSAGE_RECEIVED, silo="silo-a", **message(4, "impostor"))
        coord.append(Event.MESSAGE_SENT, silo="silo-a", **message(4, "coordinator", "global_model"))
    rec = reconcile(federation.silo_logs["silo-a"], federation.coordinator_log)
    assert rec.only_at_silo == [] and len(rec.only_at_coordinator) == 2
    received, sent = rec.only_at_coordinator
    assert rec.describe(received).endswith("received by coordinator; silo-a logged no such send")
    assert rec.describe(sent).endswith("sent by coordinator; silo-a logged no receipt")
    assert "round 4" in rec.describe(sent)


def test_duplicates_are_matched_one_to_one(federation) -> None:
    with AuditLog.open(federation.silo_logs["silo-a"], node="silo-a",
                       signing_key=load_or_create_signing_key(federation.keys["silo-a"])) as log:
        log.append(Event.MESSAGE_SENT, **message(1, "silo-a"))  # the same update logged twice
    rec = reconcile(federation.silo_logs["silo-a"], federation.coordinator_log)
    assert [e.fields["round"] for e in rec.only_at_silo] == [1]


def test_study_filter(federation) -> None:
    rec = reconcile(federation.silo_logs["silo-b"], federation.coordinator_log, study="other")
    assert rec.ok and rec.matched == 0
