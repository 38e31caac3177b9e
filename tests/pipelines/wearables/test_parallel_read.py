"""Wearable files read by workers (#20; `pipelines.wearables.signals.read_input`): the windows, refusals, counts and
notes of one sequential read, on every device layout the readers know."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import numpy as np

from coordinator.api.study import CohortSpec
from pipelines.cache import IngestCache
from pipelines.deid import Deidentifier
from pipelines.parallel import SEQUENTIAL, Workers
from pipelines.quarantine import Quarantine
from pipelines.wearables.mapping import WearableNotes
from pipelines.wearables.signals import LatestWindows, read_signals

from .test_apple_health import _export
from .test_empatica import _e4_files, _folder
from .test_fitbit import _fitabase
from .test_garmin import _samples, fit_file
from .test_openmhealth import _hr
from .test_waveform_dicom import ecg
from .test_wfdb import _record

KEY = b"fedcare-test-pseudonym-key-32byt"


def _own_csv(path: Path, minute: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("timestamp,heart_rate\n" + "\n".join(f"2023-12-31T12:{minute:02d}:{s:02d}Z,{70 + s % 3}"
                                                         for s in range(40)) + "\n")


def _hospital(root: Path) -> None:
    """Every device layout, two recordings of one patient, refused files and refused patient records."""
    _folder(root / "e4", "MRN-E4", _e4_files())
    _fitabase(root / "fitabase")  # two patients in one export
    (root / "garmin").mkdir(parents=True)
    (root / "garmin" / "MRN-FIT.fit").write_bytes(fit_file(_samples()))
    (root / "garmin" / "MRN-GCSV.fit.HR.csv").write_text(
        "\n".join(f"2023-12-31T07:00:{s:02d};{80 + s % 5};00:00:{s:02d}" for s in range(40)) + "\n")
    _export(root / "MRN-APPLE" / "apple_health_export")
    cut = _export(root / "MRN-CUT" / "apple_health_export")
    cut.write_bytes(cut.read_bytes()[:-300])  # the whole export refused
    (root / "omh").mkdir()
    (root / "omh" / "MRN-OMH.ndjson").write_text("".join(json.dumps(_hr(None, i)) + "\n" for i in range(40)))
    _record(root / "physionet", "100", ["MLII", "V5"], 20)
    ecg(root / "ecg" / "MRN-ECG.dcm", "MRN-ECG")  # no heart rate: the patient's record refused
    _own_csv(root / "own" / "MRN-OWN.csv", 0)
    _own_csv(root / "own-later" / "MRN-OWN.csv", 5)  # a later recording of the same patient wins
    (root / "own" / "MRN-BAD.csv").write_text("time;hr\n1;2\n")  # refused as a whole


def test_parallel_wearable_read_equals_sequential(tmp_path: Path) -> None:
    _hospital(tmp_path / "wearables")
    deid = Deidentifier(KEY)
    cohort = CohortSpec(signal_channels=("heart_rate",), signal_rate_hz=1.0, signal_length=16)
    index_days = {deid.pseudonym("MRN-OWN"): -1, deid.pseudonym("MRN-APPLE"): 0}  # the patient's own index date
    got = {}
    for name, workers in (("sequential", SEQUENTIAL), ("parallel", Workers(processes=2, min_inputs=1))):
        latest, quarantine, notes = LatestWindows(), Quarantine(), WearableNotes()
        stats = read_signals([tmp_path / "wearables"], cohort=cohort, deid=deid, index_date=date(2024, 1, 1),
                             cache=IngestCache(None, ""), quarantine=quarantine, latest=latest, notes=notes,
                             index_days=index_days, workers=workers)
        got[name] = (latest, quarantine.entries, notes, stats)
    (seq, seq_refused, seq_notes, seq_stats), (par, par_refused, par_notes, par_stats) = got["sequential"], got["parallel"]
    # 8 patients with a window (the ECG and the WFDB record carry no heart rate: their records refused), 10 inputs read
    assert len(seq.chosen) == 8 and seq.superseded == 1 and seq_stats["parsed"] == 10 and seq_stats["records"] == 9
    assert sorted((e.reason, Path(e.source).parent.name) for e in seq_refused) == [
        ("bad_xml", "apple_health_export"), ("missing_column", "ecg"), ("missing_column", "own"),
        ("missing_column", "physionet")]
    assert par_stats == seq_stats and par_refused == seq_refused
    assert (par_notes.devices, par_notes.mappings, par_notes.unused) == (seq_notes.devices, seq_notes.mappings,
                                                                         seq_notes.unused)
    assert par.superseded == seq.superseded and par.hours == seq.hours and par.chosen.keys() == seq.chosen.keys()
    for pid, window in seq.chosen.items():
        other = par.chosen[pid]
        assert np.array_equal(other.values, window.values)
        assert (other.coverage, other.end, other.source, other.hours) == (window.coverage, window.end, window.source,
                                                                          window.hours)
