"""The input files of one silo: files named directly, and files under named folders.

Every reader walks its inputs through `input_files`, so the same rules hold for every modality:
- a folder is walked recursively, in sorted order; `accept` chooses the files a reader reads;
- a symbolic link whose target lies outside the folder it was found in is never followed: it is
  quarantined (`link_outside_input`), because a link planted in an export folder must not make
  ingestion read `/etc/shadow` or another patient database;
- a compressed file the reader does not read (`.gz`, `.zip`, ...) is reported as skipped
  (`compressed_not_read`), never silently ignored.
"""

from __future__ import annotations

import bz2
import gzip
import logging
import lzma
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

from .errors import InputError
from .quarantine import Quarantine

log = logging.getLogger(__name__)
COMPRESSED = (".gz", ".zip", ".bz2", ".xz", ".zst", ".7z", ".tgz")


def input_files(paths: Sequence[Path], accept: Callable[[Path], bool], quarantine: Quarantine | None,
                modality: str) -> Iterator[Path]:
    """The files to read under `paths` (see the module docstring); refusals go to `quarantine` under `modality`."""
    for root in map(Path, paths):
        if not root.is_dir():
            yield root  # named by the operator: read (or refused by the reader) as it is
            continue
        base = os.path.realpath(root)
        for f in sorted(root.rglob("*")):
            if not os.path.realpath(f).startswith(base + os.sep):
                _refuse(quarantine, modality, InputError(
                    f"is a symbolic link to a file outside the input folder {root}; links out of an input folder are "
                    "not followed. Copy the file into the folder if it belongs to the export",
                    reason="link_outside_input", source=f))
                continue
            if not f.is_file():
                continue
            if accept(f):
                yield f
            elif f.name.lower().endswith(COMPRESSED):
                _refuse(quarantine, modality, InputError(
                    "is compressed and this reader does not read compressed files; it was skipped. Decompress it into "
                    "the input folder (tables: name the extension, e.g. '.csv.gz', in the node config)",
                    reason="compressed_not_read", source=f))


#: Compressions a reader can stream through (`open_input`); a name ending in another of `COMPRESSED` is not read.
STREAMED = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}


def open_input(path: Path) -> BinaryIO:
    """The file's bytes, decompressed as they are read when its name ends in a `STREAMED` suffix."""
    return STREAMED.get(path.suffix.lower(), open)(path, "rb")  # type: ignore[return-value]


def data_name(path: Path) -> str:
    """The name without a `STREAMED` suffix: 'Observation.ndjson.gz' -> 'Observation.ndjson'."""
    name = path.name.lower()
    return name[: -len(path.suffix)] if path.suffix.lower() in STREAMED else name


def _refuse(quarantine: Quarantine | None, modality: str, error: InputError) -> None:
    if quarantine is None:
        log.warning("%s", error)
    else:
        quarantine.add(modality, error)
