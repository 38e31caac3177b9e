"""DICOM Waveform IODs (12-lead ECG and the other waveform SOP classes) as signal recordings, read with pydicom.

DICOM PS3.3 A.34 (Waveform IODs) and C.10.9 (Waveform module): `WaveformSequence` holds one item per
multiplex group, each with `SamplingFrequency`, `MultiplexGroupTimeOffset` (ms),
`ChannelDefinitionSequence` (per channel: `ChannelSourceSequence` naming the lead, e.g. 'Lead II',
sensitivity and baseline) and `WaveformData`; `Dataset.waveform_array(i)` decodes group i to
[samples, channels] in the channels' sensitivity units. Leads are named by their source's
CodeMeaning (a parenthesis such as '(Einthoven)' dropped) or `ChannelLabel`, so the aliases of
`pipelines.wearables.device` apply (Lead II = II = MLII). The first sample's time is
`AcquisitionDateTime` (else ContentDate + ContentTime) plus the group's time offset; without one
the recording is relative. The patient is `PatientID`, replaced by its pseudonym as every MRN is.

Waveform instances found among DICOM images are not images (`is_waveform`, used by
`pipelines.imaging.dicom`): the image reader counts them as unused and this reader reads them.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.valuerep import DT

from ..errors import DicomError, SignalError
from ..limits import DEFAULT_LIMITS, IngestLimits
from .device import DeviceRecording, Wants, head, is_shifted, series

#: Waveform Storage SOP classes (DICOM PS3.4 B.5): ECG, audio, hemodynamic, arterial pulse, respiratory, ...
WAVEFORM_SOP_PREFIX = "1.2.840.10008.5.1.4.1.1.9."
TWELVE_LEAD_ECG = "1.2.840.10008.5.1.4.1.1.9.1.1"
WAVEFORM_SUFFIXES = (".dcm", ".dicom", "")
DEVICE = "dicom_waveform"  # its name in the registry; the node's DICOM folders are searched for it too


class WaveformNotImage(DicomError):
    """Raised by the image reader for a waveform instance: it is read on the signal path, counted as unused there."""

    reason = "waveform_read_as_signal"


def is_waveform(ds: Dataset) -> bool:
    """A Waveform IOD: a waveform Storage SOP class, or a Waveform Sequence without Pixel Data."""
    return str(ds.get("SOPClassUID", "")).startswith(WAVEFORM_SOP_PREFIX) or (
        "WaveformSequence" in ds and "PixelData" not in ds)


def input_of(path: Path) -> Path | None:
    """A DICOM file (by its 'DICM' prefix) whose SOP class is a waveform."""
    if path.suffix.lower() not in WAVEFORM_SUFFIXES:
        return None
    if head(path, 132)[128:] != b"DICM":
        return None
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID"])
    except (OSError, InvalidDicomError, ValueError, EOFError):
        return None
    return path if str(ds.get("SOPClassUID", "")).startswith(WAVEFORM_SOP_PREFIX) else None


def _lead(channel: Dataset, k: int) -> str:
    source = channel.get("ChannelSourceSequence")
    meaning = str(source[0].get("CodeMeaning", "")) if source else ""
    name = re.sub(r"\s*\(.*\)\s*$", "", meaning).strip() or str(channel.get("ChannelLabel", "")).strip()
    return name or f"channel {k + 1}"


def _start(ds: Dataset) -> datetime | None:
    """AcquisitionDateTime (its UTC offset applied; none: UTC), else ContentDate + ContentTime; None if absent."""
    text = str(ds.get("AcquisitionDateTime", "") or "").strip()
    if not text and ds.get("ContentDate"):
        text = f"{ds.ContentDate}{str(ds.get('ContentTime', '') or '').strip()}"
    if not text:
        return None
    try:
        when = DT(text)
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=timezone.utc)


def read(path: Path, wants: Wants, limits: IngestLimits = DEFAULT_LIMITS) -> Iterator[DeviceRecording]:
    """Every multiplex group's channels of one waveform instance (a lead in two groups: the first group wins)."""
    try:
        ds = pydicom.dcmread(path)
    except (OSError, InvalidDicomError, ValueError, EOFError) as e:
        raise SignalError(f"cannot be parsed as DICOM ({type(e).__name__}: {e}); re-export it from the ECG system",
                          reason="bad_dicom", source=path) from None
    mrn = str(ds.get("PatientID", "") or "").strip()
    if not mrn:
        raise SignalError("has no PatientID (0010,0020); expected the patient's MRN to link the waveform",
                          reason="no_patient_id", source=path)
    groups = ds.get("WaveformSequence") or []
    if not groups:
        raise SignalError("has no Waveform Sequence (5400,0100); expected a DICOM Waveform IOD", reason="no_waveform",
                          source=path)
    start = _start(ds)
    relative = start is None or is_shifted(start)
    chans: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    unused: list[str] = []
    for g, item in enumerate(groups):
        declared = int(item.get("NumberOfWaveformSamples", 0)) * int(item.get("NumberOfWaveformChannels", 0)) * \
            (int(item.get("WaveformBitsAllocated", 16)) // 8)
        if declared > limits.max_pixel_bytes:
            raise SignalError(f"declares {declared} bytes of waveform data, above limits.max_pixel_bytes "
                              f"({limits.max_pixel_bytes}); raise the limit in [data.limits] if it is genuine",
                              reason="too_large", source=path)
        names = [_lead(c, k) for k, c in enumerate(item.get("ChannelDefinitionSequence") or [])]
        if not any(wants(n) for n in names):
            unused.extend(names)
            continue
        try:
            data = ds.waveform_array(g)
            rate = float(item.SamplingFrequency)
        except (AttributeError, KeyError, ValueError, TypeError) as e:
            raise SignalError(f"has a waveform multiplex group {g} that cannot be decoded ({type(e).__name__}: {e}); "
                              "expected SamplingFrequency, channel definitions and Waveform Data",
                              reason="bad_waveform", source=path) from None
        offset = float(item.get("MultiplexGroupTimeOffset", 0.0) or 0.0) / 1000.0
        t = (0.0 if relative else start.timestamp()) + offset + np.arange(data.shape[0]) / rate
        for k, name in enumerate(names[: data.shape[1]]):
            if wants(name) and name not in chans:
                chans[name] = series(t, data[:, k])
            elif not wants(name):
                unused.append(name)
    yield DeviceRecording(mrn, chans, str(path), relative=relative, unused=tuple(dict.fromkeys(unused)))
