"""FHIR R4 ingestion: Bundles and Bulk Data NDJSON -> de-identified, per-patient coded facts.

Bundles of any type (collection, transaction, batch, searchset, as Synthea and FHIR servers
write them) and Bulk Data NDJSON exports (`Patient.ndjson`, `Observation.ndjson`, ...) are
read, plain or compressed (.gz, .bz2, .xz); NDJSON is streamed line by line, a Bundle entry by
entry (ijson), so memory does not grow with the file. Patient, Observation, Condition,
MedicationRequest, MedicationStatement, ImagingStudy and Encounter are validated in the
elements ingestion reads (`pipelines.ehr.fhir_fields`, the default), or in every element with
`fhir.resources` (R4B models, wire-compatible with R4 for these resources) when the node asks
for `fhir_validation = "full"`; other types are counted and skipped.

Each file becomes `FileFacts`, already de-identified (`pipelines.deid`): the patient is its
keyed pseudonym (from the MRN: the identifier typed `MR`, HL7 v2 table 0203), references are
keyed tokens, dates are days relative to the index date, ages are capped at 90. No name,
address, telecom or identifier leaves this module. Each file's facts (cacheable) go straight
to the silo's on-disk `FactStore`, which resolves references across all files afterwards (so
references between NDJSON files work) without holding the hospital's history in memory.
Observations with `valueSampledData` for a study channel become wearable segments
(`pipelines.wearables.sampled`).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import sys
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import ijson
import numpy as np
from fhir.resources.R4B import get_fhir_model_class
from pydantic import ValidationError

from ..cache import IngestCache, file_hash
from ..deid import Deidentifier, age_years
from ..errors import EXHAUSTION, FhirError, InputError, SignalError, refusal
from ..inputs import data_name, input_files, open_input
from ..limits import DEFAULT_LIMITS, IngestLimits
from ..parallel import SEQUENTIAL, WorkerPool, Workers, expect, map_ordered, settings_of
from ..quarantine import Quarantine
from ..wearables.sampled import segments_of
from .factstore import FactStore, codes_text
from .fhir_fields import USED_FIELDS, FhirValidation
from .ndjson import NdjsonChunk, lines, split_ndjson
from .observations import _date as as_date
from .observations import facts_of

log = logging.getLogger(__name__)

FHIR_SUFFIXES = (".json", ".ndjson")
PARSED_TYPES = tuple(USED_FIELDS)
MRN_TYPE = ("http://terminology.hl7.org/CodeSystem/v2-0203", "MR")


@dataclass
class FileFacts:
    """One file's de-identified content; JSON-able (see `to_json`) for the cache."""

    patients: list[tuple[list[str], str, float | None, str | None]] = field(default_factory=list)  # refs, pid, age, gender
    events: list[tuple[str, str, str, float, str | None, int, str]] = field(default_factory=list)
    # (kind "m"/"d"/"i", subject ref token, codes as `codes_text`, value, unit, day, "Type/id"); for "i" codes = ((uid, ""),).
    # Repeated values (a subject's token, codes, units) are one object each, so a worker's results pickle small.
    segments: list[tuple[str, str, float, float, list[float], str]] = field(default_factory=list)
    # valueSampledData: (subject ref token, channel, start s relative to the index cut-off, period s, samples, "Type/id")
    records: int = 0
    unused: Counter = field(default_factory=Counter)

    def extend(self, more: FileFacts) -> None:
        """Append the facts of the next piece of the same file."""
        self.patients += more.patients
        self.events += more.events
        self.segments += more.segments
        self.records += more.records
        self.unused.update(more.unused)

    def to_json(self) -> dict[str, Any]:
        return {"patients": self.patients, "events": self.events, "segments": self.segments, "records": self.records,
                "unused": dict(self.unused)}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> FileFacts:
        return cls([tuple(p) for p in d["patients"]], [tuple(e) for e in d["events"]],
                   [tuple(s) for s in d.get("segments", [])], d["records"], Counter(d["unused"]))


def ref_key(ref: str) -> str:
    """`https://host/fhir/Patient/1`, `Patient/1/_history/2` -> `Patient/1`; `urn:uuid:x` unchanged."""
    if ref.startswith("urn:"):
        return ref
    parts = [p for p in ref.split("/_history/")[0].split("/") if p]
    return "/".join(parts[-2:])


#: FHIR JSON files up to this size are read whole; larger Bundles are streamed, so memory stays flat however large the export.
WHOLE_BUNDLE_BYTES = 4 << 20


def _outline(path: Path, max_depth: int) -> str | None:
    """One streamed pass over a document too large to read whole, before it is read: its top-level resourceType (None
    if it has none), refusing a nesting deeper than `max_depth`. Events without their prefixes (`basic_parse`), the
    depth counted here: ijson keeps the path of every open level, memory that grows with the square of the depth (a
    400 KB Bundle nested 200,000 deep exhausted 24 GB), so a Bundle is streamed entry by entry only after this pass."""
    depth, key, rtype = 0, None, None
    with open_input(path) as f:
        for event, value in ijson.basic_parse(f):
            if event in ("start_map", "start_array"):
                depth += 1
                if depth > max_depth:
                    raise FhirError(f"nests deeper than limits.max_json_depth ({max_depth}) levels; expected a FHIR "
                                    "document of ordinary depth. Raise the limit in [data.limits] if it is genuine",
                                    reason="too_deep", source=path)
            elif event in ("end_map", "end_array"):
                depth -= 1
            elif depth == 1 and event == "map_key":
                key = value
                continue
            elif depth == 1 and key == "resourceType" and rtype is None:
                rtype = str(value) if event == "string" else ""
            key = None
    return rtype or None


def _json(path: Path, limits: IngestLimits) -> Iterator[tuple[str, Any]]:
    """A file of at most WHOLE_BUNDLE_BYTES (and `max_document_bytes`) read whole (`json.loads`: twice as fast as
    streaming on per-patient bundles, and it refuses a nesting deeper than Python follows at once); a larger one by
    its top-level resourceType, once its nesting is checked (`_outline`): a resource no larger than
    `max_document_bytes`, or a Bundle streamed entry by entry (ijson). A Bundle read whole has its entries unpacked by
    `iter_resources`."""
    if _small(path, limits):
        with open_input(path) as f:
            doc = json.loads(f.read())
        if isinstance(doc, dict) and not isinstance(doc.get("resourceType"), str):
            raise _not_fhir(path)
        yield "", doc
        return
    rtype = _outline(path, limits.max_json_depth)
    if rtype is None:
        raise _not_fhir(path)
    if rtype != "Bundle":
        with open_input(path) as f:
            data = f.read(limits.max_document_bytes + 1)
        if len(data) > limits.max_document_bytes:
            raise FhirError(f"is one {rtype} of more than limits.max_document_bytes ({limits.max_document_bytes}) "
                            "bytes; expected a Bundle (streamed) or a resource of ordinary size", reason="too_large",
                            source=path)
        yield "", json.loads(data)
        return
    with open_input(path) as f:
        for entry in ijson.items(f, "entry.item", use_float=True):
            res = entry.get("resource") if isinstance(entry, dict) else None
            if isinstance(res, dict):
                yield entry.get("fullUrl") or "", res


def _not_fhir(path: Path) -> FhirError:
    return FhirError("has no 'resourceType'; expected a FHIR R4 Bundle or resource", reason="not_fhir", source=path)


def _small(path: Path, limits: IngestLimits) -> bool:
    """A file read whole: at most WHOLE_BUNDLE_BYTES and `max_document_bytes` (a compressed one is not: its size is
    known only once read)."""
    return (data_name(path) == path.name.lower()
            and path.stat().st_size <= min(WHOLE_BUNDLE_BYTES, limits.max_document_bytes))


def iter_resources(path: Path, limits: IngestLimits = DEFAULT_LIMITS,
                   chunk: NdjsonChunk | None = None) -> Iterator[tuple[str, dict]]:
    """(fullUrl or "", resource dict) for every resource of a JSON bundle/resource or an NDJSON file (or `chunk` of
    it, `pipelines.ehr.ndjson`), streamed."""
    try:
        ndjson = data_name(path).endswith(".ndjson")
        for full_url, doc in (lines(chunk or path, limits) if ndjson else _json(path, limits)):
            if not isinstance(doc, dict) or "resourceType" not in doc:
                raise _not_fhir(path)
            if doc["resourceType"] == "Bundle":  # a Bundle inside NDJSON or a nested one: small by the line bound
                for entry in doc.get("entry") or []:
                    res = entry.get("resource") if isinstance(entry, dict) else None
                    if isinstance(res, dict):
                        yield entry.get("fullUrl") or "", res
            else:
                yield full_url, doc
    except (OSError, EOFError, UnicodeDecodeError) as e:  # OSError: also a damaged gzip/bz2/xz stream
        raise FhirError(f"cannot be read as UTF-8 text ({e}); expected a FHIR JSON or NDJSON file",
                        reason="unreadable", source=path) from None
    except json.JSONDecodeError as e:
        raise _bad_json(path, f"{e.msg} at line {e.lineno} column {e.colno}") from None
    except ijson.JSONError as e:  # a large file's stream (its top-level resourceType, a streamed Bundle)
        raise _bad_json(path, " ".join(str(e).split())[:200]) from None


def _bad_json(path: Path, what: str) -> FhirError:
    return FhirError(f"is not valid JSON ({what}); expected a FHIR Bundle or resource. Re-export the file from the "
                     "source system", reason="bad_json", source=path)


def validate(rtype: str, raw: dict, validation: FhirValidation) -> Any:
    """The typed resource (fhir.resources model, or `fhir_fields` model of the elements read); raises
    `FhirError` naming the first invalid element."""
    try:
        if validation is FhirValidation.FULL:
            return get_fhir_model_class(rtype).model_validate(raw)
        return USED_FIELDS[rtype].model_validate(raw)
    except (ValidationError, ValueError) as e:
        first = e.errors()[0] if isinstance(e, ValidationError) else {"loc": (), "msg": str(e)}
        loc = ".".join(map(str, first["loc"])) or "(resource)"
        raise FhirError(f"is not a valid FHIR R4 {rtype}: {loc}: {first['msg']}; fix the record at the source",
                        reason="invalid_fhir") from None


def parse_file(path: Path, deid: Deidentifier, index_date: date, errors: list[InputError],
               channels: Sequence[str] = (), limits: IngestLimits = DEFAULT_LIMITS,
               mrn_system: str | None = None, validation: FhirValidation = FhirValidation.USED_FIELDS,
               chunk: NdjsonChunk | None = None) -> FileFacts:
    """De-identified facts of one file (or of `chunk`, lines of an NDJSON file); refused records are appended to
    `errors` (the file may be partly used).

    `channels`: the study's wearable channels, read from Observations with valueSampledData.
    `mrn_system`: the identifier system that holds the MRN when a Patient has no identifier typed MR
    (many exports leave `identifier.type` out); named by hospital IT in the node config.
    `validation`: the elements read (default) or every element (`pipelines.ehr.fhir_fields`).
    """
    out = FileFacts()
    tokens: dict[str, str] = {}  # reference -> its keyed token, once per file (an HMAC per resource was 10% of parsing)

    def token(reference: str) -> str:
        got = tokens.get(reference)
        if got is None:
            got = tokens[reference] = deid.reference(reference)
        return got

    for full_url, raw in iter_resources(path, limits, chunk):
        rtype = raw.get("resourceType")
        if rtype not in PARSED_TYPES:
            out.unused[f"resource_{rtype}"] += 1
            continue
        label = f"{rtype}/{raw.get('id', '')}"
        try:
            res = validate(rtype, raw, validation)
        except FhirError as e:
            errors.append(FhirError(str(e), reason=e.reason, source=f"{path}#{label}"))
            continue
        out.records += 1
        if rtype == "Patient":
            mrn = next((str(i.value) for i in res.identifier or [] if i.value and i.type is not None
                        and any((c.system, c.code) == MRN_TYPE for c in i.type.coding or [])), None)
            if mrn is None and mrn_system:
                mrn = next((str(i.value) for i in res.identifier or [] if i.value and i.system == mrn_system), None)
            if mrn is None:
                systems = sorted({str(i.system) for i in res.identifier or [] if i.system})[:3]
                wanted = f" or of system {mrn_system!r}" if mrn_system else ""
                errors.append(FhirError(f"has no identifier of type MR (medical record number){wanted}; its identifier "
                                        f"systems are {systems}. Name the one holding the MRN as "
                                        "fhir_mrn_system in [data] of the node config", reason="no_mrn",
                                        source=f"{path}#{label}"))
                continue
            refs = {ref_key(r) for r in (full_url, f"Patient/{res.id}") if r and not r.endswith("/None")}
            out.patients.append(([token(r) for r in sorted(refs)], deid.pseudonym(mrn),
                                 age_years(as_date(res.birthDate), index_date), res.gender))
            continue
        subject = getattr(res, "subject", None)
        ref = token(ref_key(str(subject.reference))) if subject is not None and subject.reference else ""
        try:
            for kind, codes, value, unit, when in facts_of(rtype, res, out.unused):
                if kind == "i":  # an ImagingStudy: its StudyInstanceUID, remapped like the DICOM header's
                    codes = ((deid.uid(codes[0][0]), ""),)
                out.events.append((kind, ref, codes_text(codes), value, None if unit is None else sys.intern(unit),
                                   (when - index_date).days if when else 0, label))
        except FhirError as e:
            errors.append(FhirError(str(e), reason=e.reason, source=f"{path}#{label}"))
        if rtype == "Observation" and ref:
            try:
                for channel, start, period, samples in segments_of(res, channels, index_date):
                    out.segments.append((ref, channel, start, period, samples.tolist(), label))
            except SignalError as e:
                errors.append(SignalError(str(e), reason=e.reason, source=f"{path}#{label}"))
    return out


def parse_or_refuse(item: Path | NdjsonChunk, *, deid: Deidentifier, index_date: date, channels: Sequence[str] = (),
                    limits: IngestLimits = DEFAULT_LIMITS, mrn_system: str | None = None,
                    validation: FhirValidation = FhirValidation.USED_FIELDS,
                    ) -> tuple[FileFacts | None, list[InputError], InputError | None]:
    """`parse_file` of a file or an NDJSON chunk as one worker's job: (facts, refused records, None), or
    (None, [], why the file was refused)."""
    errors: list[InputError] = []
    chunk = item if isinstance(item, NdjsonChunk) else None
    path = chunk.path if chunk is not None else item
    try:
        return parse_file(path, deid, index_date, errors, channels, limits, mrn_system, validation, chunk), errors, None
    except (FhirError, *EXHAUSTION) as e:
        return None, [], refusal(e, path)


def _pieces(path: Path, workers: Workers) -> list[Path | NdjsonChunk]:
    """What the workers parse of one file: its chunks when it is a large NDJSON file and there are workers to share
    them, else the file."""
    if workers.count() > 1 and data_name(path).endswith(".ndjson"):
        try:
            chunks = split_ndjson(path, workers.ndjson_chunk_bytes)
        except OSError:
            return [path]  # refused, with the reason, when it is parsed
        if len(chunks) > 1:
            return list(chunks)
    return [path]


def _bytes(piece: Path | NdjsonChunk) -> int:
    """The bytes a worker reads for one piece (0 for a file that cannot be read: refused when it is parsed)."""
    if isinstance(piece, NdjsonChunk):
        return piece.end - piece.start
    try:
        return piece.stat().st_size
    except OSError:
        return 0


def _merged(results: list[tuple[FileFacts | None, list[InputError], InputError | None]],
            ) -> tuple[FileFacts | None, list[InputError], InputError | None]:
    """One file's pieces, parsed in order, as `parse_or_refuse` of the whole file: the first refusal refuses it."""
    facts, errors = FileFacts(), []
    for got, refused_records, refused in results:
        if got is None:
            return None, [], refused
        facts.extend(got)
        errors += refused_records
    return facts, errors, None


@dataclass
class FhirRead:
    """Counts of one FHIR read; the facts themselves went to the `FactStore`."""

    files: int = 0
    records: int = 0
    parsed: int = 0
    cached: int = 0
    sampled: int = 0  # Observations with valueSampledData for a study channel
    unused: Counter = field(default_factory=Counter)


def _store(store: FactStore, path: str, facts: FileFacts) -> None:
    """A file's facts into the store. A reference to a Patient of the same file is resolved here, as FHIR resolves a
    reference inside a Bundle to the Bundle's own entry; the others (an NDJSON Observation's Patient in another file)
    by `FactStore.resolve`, once every file is read."""
    own: dict[str, str] = {}
    for refs, pid, age, gender in facts.patients:
        store.add_patient(pid, age, gender, refs)
        own.update(dict.fromkeys(refs, pid))
    store.add_event_rows((own.get(ref), None if ref in own else ref, kind, codes, value, unit, day, f"{path}#{label}")
                         for kind, ref, codes, value, unit, day, label in facts.events)
    for ref, channel, start, period, samples, label in facts.segments:
        arr = np.asarray(samples, dtype=np.float64)
        store.add_segment(ref, channel, start, period, arr.tobytes(), arr.size, f"{path}#{label}")


def read_fhir(paths: Sequence[Path], quarantine: Quarantine, *, deid: Deidentifier, index_date: date, store: FactStore,
              channels: Sequence[str] = (), cache: IngestCache | None = None,
              limits: IngestLimits = DEFAULT_LIMITS, mrn_system: str | None = None,
              workers: Workers | WorkerPool = SEQUENTIAL,
              validation: FhirValidation = FhirValidation.USED_FIELDS) -> FhirRead:
    """Read FHIR files and folders (`*.json`, `*.ndjson`) into `store`, one file at a time.

    `validation`: what of each resource is validated (`pipelines.ehr.fhir_fields`).

    Files not in the cache are parsed by `workers` (pipelines.parallel: the run's pool, or a pool of their own) and
    merged here in path order; with more than one worker, a large NDJSON file in chunks of lines
    (`pipelines.ehr.ndjson`), merged in line order.
    Refused inputs and records go to `quarantine` (sampled-data problems under "signal").
    References are resolved later, by `FactStore.resolve`, once every EHR input is read.
    """
    cache = cache or IngestCache(None, "")
    out = FhirRead()
    patients = 0
    inputs: list[tuple[Path, str, bool]] = []  # (path, content digest, in the cache)
    files = list(input_files(paths, lambda p: data_name(p).endswith(FHIR_SUFFIXES), quarantine, "ehr"))
    expect(workers, len(files))  # (an upper bound: cached files are not parsed)
    for path in files:
        out.files += 1
        try:
            digest = file_hash(path)  # streamed: a large bundle is never held whole
            if mrn_system:  # which Patients are read depends on it: another key
                digest = hashlib.sha256(f"{digest}\x00{mrn_system}".encode()).hexdigest()
            if validation is FhirValidation.FULL:  # which records are refused depends on it: another key
                digest = hashlib.sha256(f"{digest}\x00{validation.value}".encode()).hexdigest()
        except OSError as e:
            quarantine.add("ehr", FhirError(f"cannot be read ({e})", reason="unreadable", source=path))
            continue
        inputs.append((path, digest, cache.has("fhir", digest)))
    parse = functools.partial(parse_or_refuse, deid=deid, index_date=index_date, channels=tuple(channels),
                              limits=limits, mrn_system=mrn_system, validation=validation)
    pieces = [_pieces(path, settings_of(workers)) if not cached else [] for path, _, cached in inputs]
    flat = [piece for file_pieces in pieces for piece in file_pieces]
    parsed = map_ordered(parse, flat, workers, sizes=[_bytes(piece) for piece in flat])  # facts grow with the bytes
    for (path, digest, cached), file_pieces in zip(inputs, pieces):
        hit = cache.get("fhir", digest) if cached else None
        if hit is not None:
            out.cached += 1
            facts = FileFacts.from_json(hit[0])
            errors: list[InputError] = []
        else:  # (a cache entry gone or found damaged since the walk is parsed here)
            got, errors, refused = parse(path) if cached else _merged([next(parsed) for _ in file_pieces])
            if got is None:  # one file never aborts the run
                quarantine.add("ehr", refused)
                continue
            facts = got
            out.parsed += 1
            if not errors:  # a file with refused records is re-read next time, so its entries are reported again
                cache.put("fhir", digest, facts.to_json())
        for e in errors:
            quarantine.add("signal" if isinstance(e, SignalError) else "ehr", e)
        out.records += facts.records
        out.unused.update(facts.unused)
        out.sampled += len({label for *_, label in facts.segments})
        patients += len(facts.patients)
        _store(store, str(path), facts)
    log.info("FHIR: %d files (%d from cache), %d records, %d Patient resources", out.files, out.cached, out.records,
             patients)
    return out
