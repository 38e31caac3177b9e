"""Open mHealth data points (JSON), as mobile-health platforms and the IEEE 1752.1 schemas write them.

Layout (Open mHealth "data point": `{"header": {..., "schema_id": {"namespace": "omh", "name":
"heart-rate", "version": "1.1"}, "user_id": ...}, "body": {...}}`): the body of `omh:heart-rate:1.x`
holds `heart_rate: {value, unit: "beats/min"}`, `omh:step-count:1.0` `step_count: 7939` and 2.0
`step_count: {value, unit: "steps"}`, `omh:oxygen-saturation` `oxygen_saturation: {value, unit: "%"}`;
each has an `effective_time_frame` with `date_time` or `time_interval` (`start_date_time`, taken as
the sample's time). A file holds one data point, a JSON array of them, or one per line (.ndjson /
.jsonl). Native channels are the schema names (heart-rate, step-count, oxygen-saturation: aliases of
heart_rate, steps, spo2); other schemas are named as unused. The patient is the header's `user_id`,
else the file's stem; a file may hold several patients.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import SignalError
from ..limits import DEFAULT_LIMITS, IngestLimits
from .device import DeviceRecording, Wants, head, series

log = logging.getLogger(__name__)
#: schema name -> (body field, accepted units; a bare number has no unit)
SCHEMAS: dict[str, tuple[str, tuple[str, ...]]] = {
    "heart-rate": ("heart_rate", ("beats/min",)),
    "step-count": ("step_count", ("steps",)),
    "oxygen-saturation": ("oxygen_saturation", ("%",)),
}
SUFFIXES = (".json", ".ndjson", ".jsonl")


def input_of(path: Path) -> Path | None:
    return path if path.suffix.lower() in SUFFIXES and b'"schema_id"' in head(path) else None


def _points(path: Path, limits: IngestLimits) -> list[Any]:
    size = path.stat().st_size
    if size > limits.max_document_bytes:
        raise SignalError(f"has {size} bytes, over limits.max_document_bytes ({limits.max_document_bytes}); split it "
                          "into files of one data point per line (.ndjson) or raise the limit", reason="too_large",
                          source=path)
    text = path.read_text("utf-8")
    try:
        if path.suffix.lower() != ".json":
            return [json.loads(line) for line in text.splitlines() if line.strip()]
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise SignalError(f"is not valid JSON ({e}); expected Open mHealth data points", reason="bad_json",
                          source=path) from None
    return doc if isinstance(doc, list) else [doc]


def point_value(schema: str, body: Any) -> tuple[float, float, str | None]:
    """A data point body's (time in seconds since the epoch, value, unit or None) of `schema`'s field; KeyError,
    TypeError, ValueError or AttributeError when the body has no readable value or effective time frame.
    Files (here) and live streams (silo_node.streams.messages) read points through it."""
    field, _ = SCHEMAS[schema]
    quantity = body[field]
    value = float(quantity["value"] if isinstance(quantity, dict) else quantity)
    unit = quantity.get("unit") if isinstance(quantity, dict) else None
    frame = body["effective_time_frame"]
    text = frame.get("date_time") or (frame.get("time_interval") or {}).get("start_date_time")
    when = datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    return (when if when.tzinfo else when.replace(tzinfo=timezone.utc)).timestamp(), value, unit


def read(path: Path, wants: Wants, limits: IngestLimits = DEFAULT_LIMITS) -> Iterator[DeviceRecording]:
    """One recording per patient (`user_id`) of the file's data points."""
    per_user: dict[str, dict[str, tuple[list[float], list[float]]]] = {}
    other: set[str] = set()
    bad = 0
    for point in _points(path, limits):
        try:
            header, body = point["header"], point["body"]
            schema = str(header["schema_id"]["name"])
        except (KeyError, TypeError):
            bad += 1
            continue
        if schema not in SCHEMAS or not wants(schema):
            other.add(schema)
            continue
        units = SCHEMAS[schema][1]
        try:
            when, value, unit = point_value(schema, body)
            if unit is not None and unit not in units:
                raise ValueError(f"unit {unit!r}")
        except (KeyError, TypeError, ValueError):
            bad += 1
            continue
        t, v = per_user.setdefault(str(header.get("user_id") or path.stem), {}).setdefault(schema, ([], []))
        t.append(when)
        v.append(value)
    if bad:
        log.warning("%s: %d data points without a schema, a value in the schema's unit or an effective time frame "
                    "are left out", path, bad)
    for user, chans in sorted(per_user.items()):
        yield DeviceRecording(user, {k: series(np.array(t), np.array(v)) for k, (t, v) in chans.items()}, str(path),
                              unused=tuple(sorted(other)))
    if not per_user and other:
        yield DeviceRecording(path.stem, {}, str(path), unused=tuple(sorted(other)))
