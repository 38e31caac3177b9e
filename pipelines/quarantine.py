"""Quarantine: where inputs that cannot be used go, each with a reason naming its source.

Nothing is silently dropped: every file or record that ingestion refuses is an entry here.
Entries name local file paths (which may contain MRNs, e.g. `<MRN>.csv`), so they stay at
the silo; the shareable `IngestReport` only carries their counts by reason.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .errors import InputError

log = logging.getLogger(__name__)
MAX_MESSAGE = 2000  # characters of one quarantine message (and its log line)


@dataclass(frozen=True)
class QuarantineEntry:
    modality: str  # "ehr" | "image" | "signal"
    source: str  # the file (and record within it) that was refused
    reason: str  # short code, e.g. "bad_json", "truncated", "unknown_unit"
    message: str  # what was found, what was expected, what to do


@dataclass
class Quarantine:
    entries: list[QuarantineEntry] = field(default_factory=list)

    def add(self, modality: str, error: InputError) -> None:
        message = str(error)
        if len(message) > MAX_MESSAGE:  # a hostile input must not write megabyte log lines through its message
            message = message[:MAX_MESSAGE] + f"... ({len(message) - MAX_MESSAGE} more characters)"
        entry = QuarantineEntry(modality, (error.source or "(unknown source)")[:MAX_MESSAGE], error.reason, message)
        log.warning("quarantined (%s, %s): %s", modality, entry.reason, entry.message)
        self.entries.append(entry)

    def counts(self, modality: str) -> dict[str, int]:
        return dict(sorted(Counter(e.reason for e in self.entries if e.modality == modality).items()))

    def __len__(self) -> int:
        return len(self.entries)

    def write_jsonl(self, path: str | Path) -> None:
        """Keep the quarantine next to the silo's data for the hospital's own review."""
        with open(path, "w", encoding="utf-8") as f:
            for e in self.entries:
                f.write(json.dumps(asdict(e)) + "\n")
