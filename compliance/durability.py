"""How far a node's committed writes must survive: the one setting behind every fsync of its stores.

Every real node and coordinator writes with `Durability.POWER_LOSS`: an audit entry, a privacy
ledger row, a coordinator row or a blob is on the disk (fsync; SQLite `synchronous=FULL`) before
the call that wrote it returns, so a power cut never loses what a hospital was told was recorded
(an audit trail must survive it: HIPAA 45 CFR 164.312(b)).

`fedcare simulate` rehearses a study with hundreds of simulated hospitals on one machine; there
nothing survives the run for anyone to account for, and an fsync per call would be most of a
round. It alone writes with `Durability.PROCESS_CRASH`: the bytes are handed to the operating
system and not waited for (SQLite `synchronous=OFF` in WAL mode, blobs renamed without fsync), so
what was written survives the process ending, but not a kernel crash or power cut
(https://sqlite.org/pragma.html#pragma_synchronous). No configuration file can choose it: the
simulator passes it in code, where it builds its coordinator and nodes.
"""

from __future__ import annotations

from enum import StrEnum


class Durability(StrEnum):
    POWER_LOSS = "power-loss"  # fsync before a write returns: every real node and coordinator
    PROCESS_CRASH = "process-crash"  # the OS page cache only: `fedcare simulate` alone

    @property
    def fsync(self) -> bool:
        """Whether a write waits for the disk (os.fsync)."""
        return self is Durability.POWER_LOSS

    @property
    def sqlite_synchronous(self) -> str:
        """SQLite's `PRAGMA synchronous` for this durability (with `journal_mode=WAL`)."""
        return "FULL" if self.fsync else "OFF"
