"""One streamed message -> its samples per channel, validated; the formats both receivers accept.

A message body is JSON: one FHIR R4 Observation (the elements read are validated, typed with
`fhir.resources`' FHIR primitives: `pipelines.ehr.fhir_fields`, as file ingestion does; `[streams]
fhir_validation = "full"` validates every element with `fhir.resources`; `valueQuantity`
is one sample at `effective[x]`, `valueSampledData` a run of samples `period` ms apart, as
`pipelines.wearables.sampled` reads them; components likewise), one Open mHealth data point
(IEEE 1752.1 schemas `pipelines.wearables.openmhealth.SCHEMAS`), or a JSON array of these. A
channel is named by its code (`pipelines.wearables.sampled.CHANNEL_CODES`: LOINC 8867-4 is
heart_rate), else by the code's text; the node's `[wearables] channels` maps other names at windowing.
Anything else is refused with a `SignalError` naming what was found and what was expected.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any

import numpy as np

from pipelines.ehr.fhir import validate
from pipelines.ehr.fhir_fields import FhirValidation
from pipelines.ehr.observations import codes_of
from pipelines.errors import FhirError, SignalError
from pipelines.wearables.device import normal_name
from pipelines.wearables.openmhealth import SCHEMAS, point_value
from pipelines.wearables.sampled import CHANNEL_CODES, CHANNEL_GROUPS, CHANNEL_UNITS, decode

MAX_FUTURE_S = 300.0  # a sample time later than now by more than this is a device clock error
#: Samples of one channel: (channel, POSIX seconds [n], values [n])
ChannelSamples = tuple[str, np.ndarray, np.ndarray]


def check_size(size: int, *, max_bytes: int) -> None:
    """Refuse a message of `size` bytes over `max_bytes` (before parsing it: a hostile body is never read whole)."""
    if size > max_bytes:
        raise SignalError(f"has {size} bytes or more, over max_message_bytes ({max_bytes}); send fewer samples per "
                          "message or raise [streams] max_message_bytes", reason="too_large")


def parse_message(payload: bytes, *, max_bytes: int, max_samples: int,
                  validation: FhirValidation = FhirValidation.USED_FIELDS) -> list[ChannelSamples]:
    """The samples `payload` carries; raises `SignalError` (with a reason code) for anything malformed.
    `validation`: what of an Observation is validated (`pipelines.ehr.fhir_fields`: the elements read, or all)."""
    check_size(len(payload), max_bytes=max_bytes)
    try:
        doc = json.loads(payload)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SignalError(f"is not JSON ({e}); expected a FHIR Observation or an Open mHealth data point",
                          reason="bad_json") from None
    out = [s for item in (doc if isinstance(doc, list) else [doc]) for s in _samples(item, validation)]
    n = sum(int(t.size) for _, t, _ in out)
    if n == 0:
        raise SignalError("holds no samples; expected an Observation with valueQuantity or valueSampledData, or an "
                          "Open mHealth data point", reason="no_samples")
    if n > max_samples:
        raise SignalError(f"holds {n} samples, over max_samples_per_message ({max_samples}); split it",
                          reason="too_large")
    latest = max(float(t.max()) for _, t, _ in out if t.size)
    if latest > time.time() + MAX_FUTURE_S:
        raise SignalError(f"has a sample at {datetime.fromtimestamp(latest, timezone.utc).isoformat()}, in the future; "
                          "expected the time it was measured. Check the device's clock", reason="bad_timestamp")
    return out


def _samples(item: Any, validation: FhirValidation) -> Iterator[ChannelSamples]:
    if not isinstance(item, dict):
        raise SignalError(f"holds a JSON {type(item).__name__}; expected an object (Observation or data point)",
                          reason="bad_message")
    if item.get("resourceType") == "Observation":
        yield from _observation(item, validation)
    elif isinstance(item.get("header"), dict) and "schema_id" in item["header"]:
        yield _data_point(item)
    else:
        raise SignalError(f"is an object with keys {sorted(item)[:10]}; expected a FHIR Observation (resourceType) or "
                          "an Open mHealth data point (header.schema_id)", reason="bad_message")


def _names(concept: Any) -> tuple[str, ...]:
    """The channels a CodeableConcept names: a known code, else its text / display / code as a channel name."""
    for key in codes_of(concept):
        if key in CHANNEL_CODES:
            return (CHANNEL_CODES[key],)
    for text in (concept.text, *(c.display for c in concept.coding or []), *(c.code for c in concept.coding or [])):
        if text:
            name = normal_name(text)
            return CHANNEL_GROUPS.get(name, (name,))
    raise SignalError("has a value whose code names no channel; expected a LOINC / IEEE 11073 code or a code text",
                      reason="unknown_channel")


def _factor(channel: str, unit: str | None) -> float:
    table = next((t for prefix, t in CHANNEL_UNITS.items() if channel.startswith(prefix)), None)
    if unit is None or table is None:
        return 1.0
    if unit not in table:
        raise SignalError(f"has channel {channel!r} in unit {unit!r}; expected one of {sorted(table)}",
                          reason="unknown_unit")
    return table[unit]


def _observation(raw: dict, validation: FhirValidation) -> Iterator[ChannelSamples]:
    try:
        obs = validate("Observation", raw, validation)
    except FhirError as e:  # names the first invalid element of those read (or of all, with "full")
        raise SignalError(str(e), reason=e.reason) from None
    when = obs.effectiveDateTime or obs.effectiveInstant or (obs.effectivePeriod.start if obs.effectivePeriod else None)
    if not isinstance(when, datetime):
        raise SignalError("has no effective[x] date-time; expected the time of the (first) sample", reason="bad_timestamp")
    start = (when if when.tzinfo else when.replace(tzinfo=timezone.utc)).timestamp()
    for concept, q, sd in [(obs.code, obs.valueQuantity, obs.valueSampledData),
                           *((c.code, c.valueQuantity, c.valueSampledData) for c in obs.component or [])]:
        if q is not None and q.value is not None:
            (name,) = _names(concept)[:1]
            value = float(q.value) * _factor(name, q.code or q.unit)
            yield name, np.array([start]), np.array([value])
        elif sd is not None:
            names = _names(concept)
            values = decode(sd)
            if values.shape[1] != len(names):
                raise SignalError(f"has valueSampledData with dimensions {values.shape[1]} for channels {list(names)}; "
                                  f"expected {len(names)}", reason="bad_sampled_data")
            seconds = start + np.arange(values.shape[0]) * float(sd.period) / 1000.0
            for d, name in enumerate(names):
                unit = sd.origin.code or sd.origin.unit if sd.origin is not None else None
                yield _finite(name, seconds, values[:, d] * _factor(name, unit))


def _data_point(point: dict) -> ChannelSamples:
    schema = str((point["header"].get("schema_id") or {}).get("name"))
    if schema not in SCHEMAS:
        raise SignalError(f"is an Open mHealth data point of schema {schema!r}; expected one of {sorted(SCHEMAS)}",
                          reason="unknown_schema")
    field, units = SCHEMAS[schema]
    try:
        when, value, unit = point_value(schema, point["body"])
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise SignalError(f"is an Open mHealth {schema} data point without a readable body.{field} value or "
                          f"effective_time_frame ({type(e).__name__}: {e})", reason="bad_data_point") from None
    if unit is not None and unit not in units:
        raise SignalError(f"has {field} in unit {unit!r}; expected one of {list(units)}", reason="unknown_unit")
    return _finite(schema, np.array([when]), np.array([value]))


def _finite(name: str, seconds: np.ndarray, values: np.ndarray) -> ChannelSamples:
    """Samples without a finite value are gaps (SampledData's E marker) and are not stored."""
    ok = np.isfinite(seconds) & np.isfinite(values)
    return name, seconds[ok], values[ok]


def heart_rate_observation(start: datetime, values: list[float], *, period_ms: float = 1000.0) -> bytes:
    """The message a device gateway sends: a FHIR R4 heart-rate Observation (LOINC 8867-4) carrying `values` as
    valueSampledData, `period_ms` apart from `start` (used by the tests, benchmarks/streams.py and docs/streams.md)."""
    return json.dumps({
        "resourceType": "Observation", "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4", "display": "Heart rate"}]},
        "effectiveDateTime": start.astimezone(timezone.utc).isoformat(),
        "valueSampledData": {"origin": {"value": 0, "unit": "/min", "system": "http://unitsofmeasure.org",
                                        "code": "/min"}, "period": period_ms, "dimensions": 1,
                             "data": " ".join(f"{v:g}" for v in values)},
    }).encode()
