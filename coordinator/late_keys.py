"""Who wraps a CKKS study's secret for the silos that accept it late (#15 item 2).

The key holder generates the study's keys (TASK_KEYGEN) and wraps the secret for every silo
enrolled by then, itself included; each of them can unwrap it, so each holds the secret key.
A silo that accepts later needs it wrapped for its own X25519 key (TASK_WRAP_KEY), and any
silo holding the secret can do that, not only the key holder, which may be away: the first
holder that asks for work while a late joiner waits is given the task, and keeps it for
WRAP_TASK_S; if its bundle has not come by then, the next holder that asks is given it.

If no holder has asked for work for HOLDERS_AWAY_S, the late joiner waits for one: the
coordinator says so in one line, once per wait, and the late joiner is keyed (and asked to
the round after that) as soon as one of them comes back. The secret never reaches the
coordinator: it only routes a wrapped key it cannot open (coordinator/keystore.py).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from coordinator.store import SiloRow, Store

log = logging.getLogger(__name__)

WRAP_TASK_S = 60.0  # a holder given TASK_WRAP_KEY has this long to answer before another holder is asked
HOLDERS_AWAY_S = 90.0  # no holder asked for work for this long: the late joiner is told it waits for one


class LateKeys:
    """The wrap tasks handed out (in memory: after a restart the next holder that asks is given one)."""

    def __init__(self, store: Store, *, clock: Callable[[], float]) -> None:
        self.store = store
        self.clock = clock
        self._given: dict[str, tuple[str, float]] = {}  # study -> (holder given the wrap task, when)
        self._said: set[tuple[str, str]] = set()  # (study, late joiner) told it waits for a holder

    def wraps(self, study_id: str, silo: str, *, waiting: list[str], holders: list[str]) -> bool:
        """Whether `silo`, asking for work, is to wrap the secret for `waiting` now: it holds the
        secret and no other holder has the task (or the one that had it let WRAP_TASK_S pass)."""
        if not waiting or silo not in holders:
            return False
        now = self.clock()
        given = self._given.get(study_id)
        if given is not None and given[0] == silo:
            return True
        if given is not None and now - given[1] < WRAP_TASK_S:
            return False  # another holder has it
        self._given[study_id] = (silo, now)
        log.info("study %s: %s is asked to wrap the study's key for %s", study_id, silo, ", ".join(waiting))
        return True

    def wrapped(self, study_id: str, for_silos: list[str]) -> None:
        """A holder's bundle for `for_silos` is stored: the task is done."""
        self._given.pop(study_id, None)
        self._said.difference_update({(study_id, s) for s in for_silos})

    def waits(self, study_id: str, silo: str, holders: list[str]) -> str | None:
        """Why late joiner `silo` has no key yet, when no holder has asked for work for HOLDERS_AWAY_S
        (logged once per wait); None while a holder is about and will be given the wrap task."""
        now = self.clock()
        seen = [row.last_seen for h in holders if (row := self.store.get(SiloRow, h)) is not None]
        if seen and now - max(seen) < HOLDERS_AWAY_S:
            return None
        reason = (f"study {study_id}: {silo} waits for the study's CKKS key: none of the silos holding it "
                  f"({', '.join(holders) or 'none'}) has asked for work for {HOLDERS_AWAY_S:.0f} s; it is keyed, "
                  "and asked to the next round, as soon as one of them comes back")
        if (study_id, silo) not in self._said:
            self._said.add((study_id, silo))
            log.warning("%s", reason)
        return reason
