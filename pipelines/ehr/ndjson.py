"""Bulk Data NDJSON (FHIR Bulk Data Access IG: one resource per line) cut into pieces parsed in parallel.

A large uncompressed export (`Observation.ndjson` of a whole hospital) is one input, which would
keep one core busy and the others idle. `split_ndjson` cuts it into byte ranges that start and
end at line boundaries, each with the number of its first line, in one streamed pass (memory
does not grow with the file); `lines` reads one range (or a whole file, compressed or not). Each
range is parsed by a worker (`pipelines.parallel`) and the pieces' facts are merged in file
order (`pipelines.ehr.fhir.read_fhir`), so the facts, the refused records and a refusal of the
whole file (named by its line number) are those of one sequential read. A compressed file
(.gz, .bz2, .xz) cannot be entered in the middle and is read whole.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import FhirError
from ..inputs import STREAMED, open_input
from ..limits import IngestLimits

BLOCK = 1 << 20  # bytes read at a time while looking for the line boundaries


@dataclass(frozen=True, slots=True)
class NdjsonChunk:
    """Lines `first_line`... of `path`: the bytes [start, end), cut at line boundaries."""

    path: Path
    start: int
    end: int
    first_line: int


def split_ndjson(path: Path, chunk_bytes: int) -> list[NdjsonChunk]:
    """`path` in ranges of at least `chunk_bytes`, each ending just after a newline (the last at the end of the
    file), numbered by their first line; one range for a small or a compressed file."""
    size = path.stat().st_size
    if path.suffix.lower() in STREAMED or size <= chunk_bytes:
        return [NdjsonChunk(path, 0, size, 1)]
    chunks: list[NdjsonChunk] = []
    start, first_line, pos, newlines = 0, 1, 0, 0  # newlines: in [0, pos)
    with path.open("rb") as f:
        while block := f.read(BLOCK):
            i = 0
            while (want := start + chunk_bytes - 1 - pos) < len(block):
                cut = block.find(b"\n", max(i, want))
                if cut < 0:
                    break  # the line goes on in the next block
                end = pos + cut + 1
                chunks.append(NdjsonChunk(path, start, end, first_line))
                start, first_line, i = end, newlines + block.count(b"\n", 0, cut + 1) + 1, cut + 1
            newlines += block.count(b"\n")
            pos += len(block)
    if start < size:
        chunks.append(NdjsonChunk(path, start, size, first_line))
    return chunks


def lines(source: Path | NdjsonChunk, limits: IngestLimits) -> Iterator[tuple[str, Any]]:
    """("", resource) for each non-empty line of a file or one of its chunks, streamed; a line longer than
    `max_document_bytes` or one that is not JSON refuses the file, naming the line."""
    path, start, end, n = (source.path, source.start, source.end, source.first_line - 1) if isinstance(
        source, NdjsonChunk) else (source, 0, None, 0)
    with open_input(path) as f:
        if start:
            f.seek(start)
        pos = start
        while (end is None or pos < end) and (line := f.readline(limits.max_document_bytes + 1)):
            n += 1
            pos += len(line)
            if len(line) > limits.max_document_bytes and not line.endswith(b"\n"):
                raise FhirError(f"line {n} is longer than {limits.max_document_bytes} bytes (limits.max_document_bytes); "
                                "expected one FHIR resource per line (Bulk Data NDJSON)", reason="too_large", source=path)
            if line.strip():
                try:
                    yield "", json.loads(line)
                except (json.JSONDecodeError, UnicodeDecodeError) as e:
                    raise FhirError(f"line {n} is not valid JSON ({e}); expected one FHIR resource per line "
                                    "(Bulk Data NDJSON)", reason="bad_json", source=path) from None
