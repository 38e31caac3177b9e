"""Content-addressed storage for models, updates and key material on the coordinator's disk.

A blob is streamed into a temporary file, fsynced, then renamed to its SHA-256, so a crash
never leaves a half-written blob under a valid name, nothing stored is overwritten, and a
large upload is never held in memory whole. The latest model versions are also kept in
memory, as the serialised chunks that FetchBlob sends, because every silo fetches the same
one each round: one copy per version, built once, read from disk when it is not there.

`Durability.PROCESS_CRASH` (compliance/durability.py), which only `fedcare simulate` passes,
leaves out the fsyncs: a blob is renamed once written to the OS, not once on the disk.
"""

from __future__ import annotations

import hashlib
import logging
import mmap
import os
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

from compliance.durability import Durability
from coordinator.api.chunks import serialized_data_chunks

log = logging.getLogger(__name__)

# An interrupted upload is kept this long for the sender to resume it (a round rarely lasts
# longer); then it is deleted, so abandoned uploads cannot fill the coordinator's disk.
PARTIAL_MAX_AGE_S = 6 * 3600.0


def _sha256_into(data: bytes | bytearray | memoryview, box: list[str]) -> None:
    box.append(hashlib.sha256(data).hexdigest())


class _Background:
    """Run `fn(*args)` in a thread (for calls that release the GIL: fsync, hashing); `wait`
    joins it and raises what it raised."""

    def __init__(self, fn: Callable[..., object], *args: object) -> None:
        self._error: BaseException | None = None

        def run() -> None:
            try:
                fn(*args)
            except BaseException as e:  # noqa: BLE001 - handed to whoever waits
                self._error = e

        self._thread = threading.Thread(target=run, name="blob-io", daemon=True)
        self._thread.start()

    def wait(self, *, raise_error: bool = True) -> None:
        self._thread.join()
        if raise_error and self._error is not None:
            raise self._error


class Incoming:
    """A blob being received: write pieces, then `view` it and `commit` it under its hash (or drop it)."""

    def __init__(self, store: "BlobStore") -> None:
        self.store = store
        fd, name = tempfile.mkstemp(dir=store.root, prefix=".incoming-")
        self.path = Path(name)
        self._file = os.fdopen(fd, "wb")
        self._map: mmap.mmap | None = None
        self._synced: _Background | None = None
        self.committed: str | None = None

    def write(self, data: bytes) -> None:
        self._file.write(data)

    def view(self) -> memoryview:
        """The received bytes, memory-mapped (no copy). They reach the disk (fsync) while the
        caller checks them; `commit` waits for that before the blob gets its name."""
        if self._map is None:
            self._file.flush()
            if self._synced is None:
                self._synced = _Background(self.store.sync, self._file.fileno())
            size = self._file.tell()
            if size == 0:
                return memoryview(b"")
            with open(self.path, "rb") as f:
                self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        return memoryview(self._map)

    def commit(self, sha: str) -> str:
        self.view()
        assert self._synced is not None
        self._synced.wait()  # never a name for bytes that are not on disk
        target = self.store.path(sha)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(self.path, target)
        self.committed = sha
        return sha

    def keep_as(self, path: Path) -> None:
        """Keep what arrived of an interrupted upload under `path`, so the sender can resume."""
        self._file.flush()
        path.parent.mkdir(parents=True, exist_ok=True)
        os.replace(self.path, path)
        self.committed = "partial"

    def close(self) -> None:
        if self._synced is not None:
            self._synced.wait(raise_error=False)  # its file descriptor closes next
        self._file.close()
        if self._map is not None:
            try:
                self._map.close()
            except BufferError:  # a view is still alive somewhere; the GC unmaps it later
                pass
        if self.committed is None:
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> "Incoming":
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()


class BlobStore:
    def __init__(self, root: Path, *, cache_entries: int = 2, durability: Durability = Durability.POWER_LOSS) -> None:
        self.root = Path(root)
        self.durability = durability
        self.root.mkdir(parents=True, exist_ok=True)
        self._chunks: OrderedDict[str, list[bytes]] = OrderedDict()
        self._chunks_lock = threading.Lock()
        self._cache_entries = cache_entries

    def sync(self, fd: int) -> None:
        """The written bytes of `fd` onto the disk, as this store's durability asks."""
        if self.durability.fsync:
            os.fsync(fd)

    def path(self, sha: str) -> Path:
        if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
            raise ValueError(f"not a SHA-256 hex digest: {sha!r}")
        return self.root / sha[:2] / sha

    def partial_path(self, silo: str, sha: str) -> Path:
        """Where an interrupted upload of `sha` by `silo` waits to be resumed."""
        self.path(sha)  # validates the digest
        return self.root / ".partial" / f"{hashlib.sha256(silo.encode()).hexdigest()[:16]}-{sha}"

    def incoming(self) -> Incoming:
        return Incoming(self)

    def expire_partials(self, max_age_s: float = PARTIAL_MAX_AGE_S, *, now: float | None = None) -> int:
        """Delete interrupted uploads (`.partial/`) and abandoned receptions (`.incoming-*`, `.put-*`)
        untouched for `max_age_s`; a live upload writes on and stays. Returns how many went."""
        now = time.time() if now is None else now
        partial_dir = self.root / ".partial"
        candidates = [*self.root.glob(".incoming-*"), *self.root.glob(".put-*"),
                      *(partial_dir.iterdir() if partial_dir.is_dir() else ())]
        removed = 0
        for path in candidates:
            try:
                if now - path.stat().st_mtime > max_age_s:
                    path.unlink()
                    removed += 1
            except FileNotFoundError:
                continue  # committed or removed meanwhile
        if removed:
            log.info("expired %d partial uploads older than %.0f s in %s", removed, max_age_s, self.root)
        return removed

    def put(self, data: bytes | bytearray | memoryview, sha: str | None = None, *, serve: bool = False,
            replaces: str | None = None) -> str:
        """Store `data` under its SHA-256; `serve=True` also prepares its chunks for FetchBlob,
        dropping those of `replaces` (the version it supersedes) first.

        Hashing runs beside the write, and the chunks are built beside the fsync (both release
        the GIL), so a new model version is ready sooner; the name comes only once it is on disk.
        """
        digest = _Background(_sha256_into, data, box := []) if sha is None else None
        fd, tmp_name = tempfile.mkstemp(dir=self.root, prefix=".put-")
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                if digest is not None:
                    digest.wait()
                    sha = box[0]
                assert sha is not None
                target = self.path(sha)
                if not target.exists():
                    synced = _Background(self.sync, f.fileno())
                    if serve:
                        self._serve(sha, data, replaces)
                    synced.wait()
                    target.parent.mkdir(parents=True, exist_ok=True)
                    os.replace(tmp, target)
                elif serve:
                    self._serve(sha, data, replaces)
        finally:
            tmp.unlink(missing_ok=True)
        return sha

    def _serve(self, sha: str, data: bytes | bytearray | memoryview, replaces: str | None) -> None:
        with self._chunks_lock:
            self._chunks.pop(replaces or "", None)
        self.serialized_chunks(sha, data)

    def get(self, sha: str) -> bytes:
        return self.path(sha).read_bytes()

    def size(self, sha: str) -> int:
        return self.path(sha).stat().st_size

    def serialized_chunks(self, sha: str, data: bytes | bytearray | memoryview | None = None) -> list[bytes]:
        """The blob's data chunks as serialised `Chunk` messages, built once per blob and kept for
        the latest `cache_entries` blobs (from `data`, or read from disk)."""
        with self._chunks_lock:  # concurrent fetches of a new version wait for one build
            if sha not in self._chunks:
                self._chunks[sha] = serialized_data_chunks(self.get(sha) if data is None else data)
                while len(self._chunks) > self._cache_entries:
                    self._chunks.popitem(last=False)
            self._chunks.move_to_end(sha)
            return self._chunks[sha]

    def exists(self, sha: str) -> bool:
        return self.path(sha).exists()
