"""Buffered asynchronous aggregation (FedBuff, #15 item 3) over real processes: three silos, one
slow (node config train_delay_s), a buffer of two, DP on. The study finishes without waiting for
the slow silo, and every version, recomputed from the stored updates (under CKKS decrypted with
the key holder's own secret, unwrapped from its state dir), is the previous one plus
Σ wᵢ s(τᵢ) Δᵢ / Σ wᵢ with s(τ) = (1 + τ)^-0.5; the released model is one of those versions.
One silo's ε cap allows one local run: it is charged for that run, refuses the next with the
reason once (it is offered no further task), and the study finishes with the others; every other silo's ledger holds one row per
local run (per update it sent)."""

import hashlib
import itertools
from pathlib import Path

import numpy as np
import pytest

from compliance import read_log
from compliance.ledger import PrivacyLedger
from compliance.node_log import AUDIT_LOG_FILE
from coordinator.api.study import PrivacySpec, StudySpec, TrainingSpec
from coordinator.api.tensors import decode_tensors
from coordinator.blobs import BlobStore
from coordinator.outcome import RoundOutcome
from coordinator.server import BLOB_DIR, STATE_DATABASE
from coordinator.store import EnrollmentRow, ModelVersionRow, RoundRow, Store, StudyRow, UpdateRow, open_engine
from coordinator.versions import ModelVersions
from privacy.he import EncryptedSum, SiloKeyPair, decrypt_average, unwrap_secret
from silo_node.node import LEDGER_FILE, WRAP_KEY_FILE
from silo_node.update import resolve_version, unflatten

pytestmark = pytest.mark.slow

CAP = 5.6  # with target ε 8 over 4 rounds one local run costs about 4-5.4, two about 5.8-6.4


def _state(cluster, silo: str) -> Path:
    return cluster.root / "silos" / silo / "state"


def _study_secret(cluster, store: Store, blobs: BlobStore, study_id: str) -> bytes:
    """The study's CKKS secret as the key holder holds it: its wrapped key, unwrapped with its own key pair."""
    holder = store.get(StudyRow, study_id).key_holder
    wrapped = blobs.get(store.get(EnrollmentRow, study_id, holder).wrapped_key_sha)
    keys = SiloKeyPair.from_private_bytes((_state(cluster, holder) / WRAP_KEY_FILE).read_bytes())
    return unwrap_secret(bytes(wrapped), keys, context=study_id.encode())


@pytest.mark.parametrize("encryption", ["none", "ckks-exact"])
def test_async_study_with_a_slow_silo_builds_staleness_weighted_versions(cluster, encryption: str) -> None:
    client = cluster.start_coordinator()
    capped, slow = cluster.hospitals[0], cluster.hospitals[-1]
    for h in cluster.hospitals:
        # every local run takes at least 1 s, the slow silo's 3 s: it answers a few versions late
        cluster.start_silo(h, train_delay_s=3.0 if h is slow else 1.0,
                           **({"privacy": {"epsilon_cap": CAP}} if h is capped else {}))
    spec = StudySpec(name=f"e2e-async-{encryption}",
                     training=TrainingSpec(rounds=4, min_silos=2, expected_silos=3, round_timeout_s=120,
                                           enrollment_timeout_s=600, mode="async", buffer_size=2, max_staleness=10),
                     privacy=PrivacySpec(dp=True, target_epsilon=8.0, encryption=encryption))
    study_id = client.submit(spec)
    summary = cluster.wait_for(client, study_id, lambda st, s: st.state == "done", timeout=500)
    state = cluster.root / "coordinator"
    store = Store(open_engine(f"sqlite:///{state / STATE_DATABASE}"))
    blobs = BlobStore(state / BLOB_DIR)
    versions = ModelVersions(store, blobs)
    secret = _study_secret(cluster, store, blobs, study_id) if encryption != "none" else None
    names, v0 = decode_tensors(blobs.get(store.get(ModelVersionRow, study_id, 0).blob_sha))
    n_values = sum(np.asarray(a).size for a in v0)

    def version(number: int, base: list[np.ndarray]) -> list[np.ndarray]:
        header, data = versions.blob(study_id, spec, store.get(ModelVersionRow, study_id, number))
        return resolve_version(data, header.encoding, header.metadata_json, base=(names, base),
                               secret_context=secret)[1]

    def delta(update: UpdateRow, like: list[np.ndarray]) -> list[np.ndarray]:
        if secret is None:
            return [np.asarray(d, dtype=np.float64) for d in decode_tensors(blobs.get(update.blob_sha))[1]]
        alone = EncryptedSum(secret, n_values, "exact")  # one update, weight 1: its own decryption
        alone.add(bytes(blobs.get(update.blob_sha)), 1.0)
        return unflatten(decrypt_average(secret, alone.result(), n_values=n_values, total_weight=1.0), like)

    stale, contributors = 0, set()
    model = [np.array(a) for a in v0]
    for r in range(1, spec.training.rounds + 1):
        updates = store.all(UpdateRow, study_id=study_id, round=r)
        staleness = RoundOutcome.of(store.get(RoundRow, study_id, r).outcome_json).staleness
        assert len(updates) == 2 and sorted(staleness) == sorted(u.silo for u in updates)
        stale += sum(1 for s in staleness.values() if s > 0)
        contributors.update(u.silo for u in updates)
        total = sum(u.weight for u in updates)
        scaled = [(u.weight * (1 + staleness[u.silo]) ** -0.5, delta(u, model)) for u in updates]
        expected = [m + sum(c * np.asarray(d[i], dtype=np.float64) for c, d in scaled) / total
                    for i, m in enumerate(model)]
        model = version(r, model)
        for got, want in zip(model, expected):
            np.testing.assert_allclose(got, want, atol=1e-5 if secret is None else 2e-4)
    assert stale > 0, "no update was ever stale: the slow silo did not slow anything down"
    assert slow.name in contributors, f"the slow silo's updates never made it into a version: {contributors}"
    released = summary["release"]["round"]
    row = store.get(StudyRow, study_id)
    assert hashlib.sha256(blobs.get(row.final_model_sha)).hexdigest() == row.final_model_sha
    if secret is None:
        assert row.final_model_sha == store.get(ModelVersionRow, study_id, released).blob_sha
    else:  # published by the key holder: the version it decrypted
        base = names, v0
        for v in range(1, released + 1):
            base = names, version(v, base[1])
        for got, want in zip(decode_tensors(blobs.get(row.final_model_sha))[1], base[1]):
            np.testing.assert_array_equal(np.asarray(got), want)
    _assert_epsilon_charged_per_local_run(cluster, store, study_id, capped.name)
    store.engine.dispose()


def _assert_epsilon_charged_per_local_run(cluster, store: Store, study_id: str, capped: str) -> None:
    for h in cluster.hospitals:
        ledger = PrivacyLedger(_state(cluster, h.name) / LEDGER_FILE).rows(study_id)
        events = [e for e in read_log(_state(cluster, h.name) / AUDIT_LOG_FILE).entries
                  if e.fields.get("study") == study_id]
        sent = [e.fields["round"] for e in events if e.event == "message_sent" and e.fields.get("kind") == "update"]
        # one ledger row per local run, charged before its update left; ε only grows
        assert [r.round for r in ledger] == sent, (h.name, [r.round for r in ledger], sent)
        assert all(a.epsilon < b.epsilon for a, b in itertools.pairwise(ledger)), ledger
        assert all(r.epsilon <= (CAP if h.name == capped else 8.0 + 1e-6) for r in ledger), ledger
        refused = [e.fields for e in events if e.event == "budget_refused"]
        if h.name == capped:
            # said once: with budget_spent the coordinator offers it no further task (coordinator/buffer.py)
            assert len(ledger) >= 1 and len(refused) == 1 and refused[0]["epsilon_after"] > CAP, (ledger, refused)
            stored = [u for u in store.all(UpdateRow, study_id=study_id) if u.silo == capped]
            assert len(stored) == len(ledger)  # its one run (round 1, on time) is in a version
        else:
            assert not refused and len(ledger) >= 1
