"""Apple Health exports (`export.xml` from Health > Export All Health Data), streamed element by element.

Layout (Apple HealthKit export, DTD in the file): `<HealthData>` holds `<Record type="HKQuantity
TypeIdentifier..." unit=".." startDate="2019-06-11 20:52:42 +0200" endDate=".." value=".."/>` for
every sample, along with `Workout`, `ActivitySummary` and `Correlation` elements. The file is often
gigabytes, so it is read with `xml.etree.ElementTree.iterparse` and every element is cleared once
read; only the types the study can use are kept (`HKQuantityTypeIdentifierHeartRate`, count/min;
`HKQuantityTypeIdentifierStepCount`, count per interval, placed at its start;
`HKQuantityTypeIdentifierOxygenSaturation`, a fraction stored as %, scaled to percent; any other
type a node mapping names, as it is). The dates carry their UTC offset.

One export is one person: the patient is the name of the folder holding it (the export unzips to
`apple_health_export/`, so that folder's parent: `<MRN>/apple_health_export/export.xml`), or the file's
stem when it is not `export`.
"""

from __future__ import annotations

import logging
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import numpy as np

from ..errors import SignalError
from ..limits import DEFAULT_LIMITS, IngestLimits
from .device import DeviceRecording, Wants, head, series

log = logging.getLogger(__name__)
DATE_FORMAT = "%Y-%m-%d %H:%M:%S %z"
#: HealthKit type -> factor to the study's unit (`pipelines.wearables.recordings.SIGNAL_REFERENCE`)
SCALE: dict[str, float] = {"HKQuantityTypeIdentifierOxygenSaturation": 100.0}
EXPORT_FOLDER = "apple_health_export"


def input_of(path: Path) -> Path | None:
    if path.suffix.lower() != ".xml":
        return None
    return path if path.name == "export.xml" or b"<HealthData" in head(path) else None


def patient_of(path: Path) -> str:
    if path.stem != "export":
        return path.stem
    folder = path.parent.parent if path.parent.name == EXPORT_FOLDER else path.parent
    return folder.name


def read(path: Path, wants: Wants, limits: IngestLimits = DEFAULT_LIMITS) -> Iterator[DeviceRecording]:
    """The export's samples of the wanted types; other record types are named as unused."""
    samples: dict[str, tuple[list[float], list[float]]] = {}
    other: set[str] = set()
    bad = 0
    try:
        context = ET.iterparse(str(path), events=("start", "end"))
        _, root = next(context)
        if root.tag != "HealthData":
            raise SignalError(f"has root element <{root.tag}>; expected <HealthData> of an Apple Health export.xml",
                              reason="bad_xml", source=path)
        for event, elem in context:
            if event != "end" or elem.tag != "Record":
                continue
            kind = elem.get("type", "")
            if not wants(kind):
                other.add(kind)
            else:
                try:
                    when = datetime.strptime(elem.get("startDate", ""), DATE_FORMAT).timestamp()
                    value = float(elem.get("value", "nan")) * SCALE.get(kind, 1.0)
                except ValueError:
                    bad += 1
                else:
                    t, v = samples.setdefault(kind, ([], []))
                    t.append(when)
                    v.append(value)
            elem.clear()
            root.clear()  # read elements are dropped from the tree: memory stays flat however long the export
    except ET.ParseError as e:
        raise SignalError(f"is not well-formed XML ({e}); expected an Apple Health export.xml. Export it again from "
                          "the Health app", reason="bad_xml", source=path) from None
    except StopIteration:
        raise SignalError("is empty; expected an Apple Health export.xml", reason="bad_xml", source=path) from None
    if bad:
        log.warning("%s: %d records without a date like '2019-06-11 20:52:42 +0200' or a numeric value are left out",
                    path, bad)
    chans = {k: series(np.array(t), np.array(v)) for k, (t, v) in samples.items()}
    yield DeviceRecording(patient_of(path), chans, str(path), unused=tuple(sorted(other - {""})))
