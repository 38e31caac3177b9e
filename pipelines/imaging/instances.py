"""The work of DICOM ingestion that runs on every core: header pass, chosen-slice decoding, volumes.

`pipelines.imaging.images` reads a hospital's instances in two passes. The header pass parses
every instance (pydicom, PS3.10) and de-identifies its header (PS3.15 E.1, `pipelines.deid`); the
pixel pass decodes only the middle slice of the series chosen for each patient of the cohort (a 3D
study: every slice of that series, into one volume). Each is a pure function of local files
(`parse_local`, `decode_local`, `volume_local`), so `pipelines.parallel` runs them in worker processes
and hands the results back in input order: a parallel run adds to the series index, the cache and the
quarantine exactly what a sequential one would. Inputs that are no local file (a PACS, DICOMweb) are
fetched by threads of the ingesting process, which alone can read them (`fetch`), and parsed there.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from datetime import date
from functools import partial
from pathlib import Path

import numpy as np

from ..cache import IngestCache, content_hash, file_hash
from ..deid import Deidentifier
from ..errors import EXHAUSTION, DicomError, InputError, exhausted
from ..limits import IngestLimits
from ..parallel import WorkerPool, Workers, fetch_ordered, map_ordered
from .dicom import DicomHeader, DicomInput, normalise_slice, read_frame, read_header
from .series import Member
from .series_frames import check_geometry, series_frames, series_source
from .volumes import series_volume

HEADER_CACHE = "dicom-header"  # cache kind of a de-identified header, by the instance's content


@dataclass(frozen=True, slots=True)
class ParsedInstance:
    """The header pass of one instance: its content digest, and its header or why it is refused."""

    digest: str
    header: DicomHeader | None
    refused: DicomError | None  # a WaveformNotImage among them: read on the signal path instead


def _unreadable(e: OSError, source: str) -> DicomError:
    return DicomError(f"cannot be read ({e}); check the path and its permissions", reason="unreadable", source=source)


def parse_instance(source: str, read: Callable[[], bytes], *, deid: Deidentifier, index_date: date,
                   limits: IngestLimits) -> ParsedInstance:
    """Read one instance and parse its de-identified header; a refusal is returned, never raised."""
    try:
        data = read()
    except OSError as e:
        return ParsedInstance("", None, _unreadable(e, source))
    digest = content_hash(data)
    try:
        return ParsedInstance(digest, read_header(data, source, deid, index_date, limits), None)
    except EXHAUSTION as e:  # one file never aborts the run
        why = exhausted(e, source)
        return ParsedInstance(digest, None, DicomError(str(why).removeprefix(f"{source}: "), reason=why.reason,
                                                       source=source))
    except DicomError as e:
        return ParsedInstance(digest, None, e)


def parse_local(item: tuple[str, str], **kwargs: object) -> ParsedInstance:
    """`parse_instance` of a local file (source, path): what a worker process is given."""
    source, path = item
    return parse_instance(source, Path(path).read_bytes, **kwargs)  # type: ignore[arg-type]


def fetch(inp: DicomInput) -> bytes | OSError:
    """The bytes of an input that is no local file (a PACS answer), or why they could not be fetched (returned, so
    that `pipelines.parallel.fetch_ordered` threads hand it back in order)."""
    try:
        return inp.read()
    except OSError as e:
        return e


def replay(fetched: bytes | OSError) -> bytes:
    """What `fetch` got, as a reader: its bytes, or its error raised again."""
    if isinstance(fetched, OSError):
        raise fetched
    return fetched


def headers(inputs: Iterable[DicomInput], *, deid: Deidentifier, index_date: date, cache: IngestCache,
            stats: Counter, limits: IngestLimits,
            workers: Workers | WorkerPool) -> Iterator[tuple[DicomInput, ParsedInstance]]:
    """Each input with its header pass, in input order. A local file whose header is in the cache (by its content)
    is not parsed again; the other local files are parsed by `workers`; the rest (a PACS's) are fetched by threads
    and parsed here. Counts `parsed` and `cached`."""
    kwargs = {"deid": deid, "index_date": index_date, "limits": limits}
    listed: list[tuple[DicomInput, ParsedInstance | None]] = []  # (input, its cached header pass)
    for inp in inputs:
        listed.append((inp, _cached(inp, cache) if inp.path is not None else None))
    parsed = map_ordered(partial(parse_local, **kwargs),
                         [(inp.source, str(inp.path)) for inp, hit in listed if hit is None and inp.path is not None],
                         workers)
    fetched = fetch_ordered(fetch, [inp for inp, hit in listed if inp.path is None], workers)
    for inp, hit in listed:
        if hit is not None:
            stats["cached"] += 1
            yield inp, hit
            continue
        if inp.path is not None:
            got = next(parsed)
        else:  # a PACS instance: fetched by a thread, and looked up in the cache by its content first
            data = next(fetched)
            if isinstance(data, OSError):
                yield inp, ParsedInstance("", None, _unreadable(data, inp.source))
                continue
            hit = _cached_header(content_hash(data), cache)
            if hit is not None:
                stats["cached"] += 1
                yield inp, hit
                continue
            got = parse_instance(inp.source, partial(bytes, data), **kwargs)  # type: ignore[arg-type]
        if got.header is not None:
            stats["parsed"] += 1
            cache.put(HEADER_CACHE, got.digest, asdict(got.header))
        yield inp, got


def _cached(inp: DicomInput, cache: IngestCache) -> ParsedInstance | None:
    """The cached header pass of a local file, or None (no cache, not cached, or unreadable: parsed and refused then)."""
    if cache.root is None:
        return None
    try:
        digest = file_hash(Path(inp.path))  # type: ignore[arg-type]
    except OSError:
        return None
    return _cached_header(digest, cache)


def _cached_header(digest: str, cache: IngestCache) -> ParsedInstance | None:
    hit = cache.get(HEADER_CACHE, digest)
    if hit is None:
        return None
    meta = hit[0]
    return ParsedInstance(digest, DicomHeader(**{**meta, "spacing": tuple(meta["spacing"])}), None)


def decode_slice(source: str, read: Callable[[], bytes], *, spacing: tuple[float, float],
                 image_size: int) -> np.ndarray | DicomError:
    """The middle slice of one instance as `[1, S, S]`, or why it cannot be decoded (returned, never raised)."""
    try:
        pixels = read_frame(read(), source)
    except OSError as e:
        return DicomError(str(e), reason="unreadable", source=source)
    except DicomError as e:
        return e
    return normalise_slice(pixels, image_size, spacing)


def decode_local(item: tuple[str, str, tuple[float, float]], *, image_size: int) -> np.ndarray | DicomError:
    """`decode_slice` of a local file (source, path, pixel spacing): what a worker process is given."""
    source, path, spacing = item
    return decode_slice(source, Path(path).read_bytes, spacing=spacing, image_size=image_size)


def read_member(m: Member) -> bytes:
    """The bytes of a series member that is a local file; a file that cannot be read refuses its series' volume."""
    try:
        return Path(m.path).read_bytes()  # type: ignore[arg-type]
    except OSError as e:
        raise DicomError(str(e), reason="unreadable", source=m.source) from None


def build_volume(series_uid: str, members: Sequence[Member], read: Callable[[Member], bytes], *, image_size: int,
                 depth: int) -> np.ndarray | InputError:
    """The chosen series as `[1, depth, S, S]` (`pipelines.imaging.volumes`), or why it cannot be (returned, never
    raised): its geometry checked from the headers first (`pipelines.imaging.series_frames`)."""
    source = series_source(series_uid, members)
    try:
        check_geometry(members, source)
        return series_volume(series_frames(members, read, source), image_size=image_size, depth=depth,
                             spacing=members[0].spacing, source=source)
    except InputError as e:
        return e


def volume_local(item: tuple[str, list[Member]], *, image_size: int, depth: int) -> np.ndarray | InputError:
    """`build_volume` of a series of local files (series UID, members in slice order): what a worker is given."""
    series_uid, members = item
    return build_volume(series_uid, members, read_member, image_size=image_size, depth=depth)
