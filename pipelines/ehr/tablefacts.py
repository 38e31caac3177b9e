"""One chunk of a tabular EHR file as de-identified facts: applied to the `FactStore`, and cached.

`pipelines.ehr.tabular` parses each chunk of a table into `ChunkFacts` and applies it to the store.
While no row of the file has been refused, each chunk is also cached (`tabular-chunk`,
key `<file key>.<chunk>`); when the whole file was read without a refused row, a manifest
follows (`tabular`, key `<file key>`: chunks, rows used, unused counts). A re-run finds the
manifest and replays the chunks one at a time instead of parsing rows, so re-ingesting parses
only new or changed tables and memory stays bounded by one chunk, as when parsing. A file
with refused rows is re-read (and its rows re-reported) every run, as FHIR files are.

The file key (`table_key`) is the SHA-256 of the table's bytes and the chunk size; for an OMOP
clinical table also of the CONCEPT tables read in the same run, because their mapping is in
the facts. Sources are stored relative to the file (`row=N`) and prefixed with its current
path when replayed, so a renamed table is still a hit.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..cache import IngestCache
from .factstore import Event, FactStore

log = logging.getLogger(__name__)


def table_key(digest: str, chunk_rows: int, vocabulary: Sequence[str] = ()) -> str:
    """The cache key of a table: its content, the chunking and (OMOP clinical tables) the CONCEPT tables' digests."""
    return hashlib.sha256(f"{digest}:{chunk_rows}:{','.join(sorted(vocabulary))}".encode()).hexdigest()


@dataclass
class ChunkFacts:
    """What one chunk adds to the store, in row order."""

    patients: list[tuple[str, float | None, str | None, list[str]]] = field(default_factory=list)  # pid, age, gender, refs
    events: list[tuple[str | None, str | None, Event]] = field(default_factory=list)  # (pid, ref, event)
    concepts: list[tuple[int, str, str]] = field(default_factory=list)  # OMOP CONCEPT rows
    records: int = 0  # rows used
    unused: Counter = field(default_factory=Counter)  # valid rows not used, by reason

    def apply(self, store: FactStore) -> None:
        for pid, age, gender, refs in self.patients:
            store.add_patient(pid, age, gender, refs)
        if self.concepts:
            store.add_concepts(self.concepts)
        store.add_events(self.events)

    def to_json(self, path: Path) -> dict[str, Any]:
        prefix = f"{path}#"
        return {"patients": self.patients, "concepts": self.concepts, "records": self.records, "unused": dict(self.unused),
                "events": [[pid, ref, kind, [list(c) for c in codes], value, unit, day, source.removeprefix(prefix)]
                           for pid, ref, (kind, codes, value, unit, day, source) in self.events]}

    @classmethod
    def from_json(cls, d: dict[str, Any], path: Path) -> "ChunkFacts":
        return cls([(pid, age, gender, list(refs)) for pid, age, gender, refs in d["patients"]],
                   [(pid, ref, (kind, tuple(tuple(c) for c in codes), value, unit, day, f"{path}#{source}"))
                    for pid, ref, kind, codes, value, unit, day, source in d["events"]],
                   [(int(i), str(v), str(c)) for i, v, c in d["concepts"]], int(d["records"]), Counter(d["unused"]))


class TableCache:
    """Per-file cache writer and reader over the silo's `IngestCache` (see the module docstring)."""

    def __init__(self, cache: IngestCache, key: str, path: Path) -> None:
        self.cache, self.key, self.path = cache, key, path
        self.chunks = 0  # chunks cached or replayed so far
        self.clean = True  # no row refused so far: chunks are worth caching

    def manifest(self) -> dict[str, Any] | None:
        hit = self.cache.get("tabular", self.key)
        return None if hit is None else hit[0]

    def replay(self, n: int) -> Iterator[ChunkFacts]:
        """The first `n` cached chunks, stopping early at one that is missing or unreadable (`chunks` says how far)."""
        for i in range(n):
            hit = self.cache.get("tabular-chunk", f"{self.key}.{i}")
            if hit is None:
                log.warning("%s: cached chunk %d is missing or unreadable; parsing the rest of the table", self.path, i)
                return
            self.chunks = i + 1
            yield ChunkFacts.from_json(hit[0], self.path)

    def put_chunk(self, facts: ChunkFacts, refused: bool) -> None:
        self.clean = self.clean and not refused
        if self.clean:
            self.cache.put("tabular-chunk", f"{self.key}.{self.chunks}", facts.to_json(self.path))
        self.chunks += 1

    def finish(self, unused: Counter) -> None:
        """Write the manifest if every chunk was cached (`unused`: the file-level counts); the file is then a hit."""
        if self.clean:
            self.cache.put("tabular", self.key, {"chunks": self.chunks, "unused": dict(unused)})
