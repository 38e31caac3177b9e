"""DICOM 12-lead ECG Waveform Storage instances built with pydicom (PS3.3 A.34.3, C.10.9), read as signals,
and routed away from the image reader when they sit among a node's DICOM files."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import generate_uid

from coordinator.api.study import CohortSpec
from pipelines.ingest import STEPS, ingest_silo
from pipelines.synthetic import generate_federation

from ..dicom_series import new_instance

TWELVE_LEAD = "1.2.840.10008.5.1.4.1.1.9.1.1"
LEADS = ("Lead I (Einthoven)", "Lead II", "Lead III", "Lead aVR", "Lead aVL", "Lead aVF",
         "Lead V1", "Lead V2", "Lead V3", "Lead V4", "Lead V5", "Lead V6")
FS = 500.0


def ecg(path: Path, mrn: str, *, when: str | None = "20231231100000", seconds: float = 2.0) -> Path:
    ds = new_instance(TWELVE_LEAD)
    ds.PatientID, ds.PatientName, ds.Modality = mrn, "Doe^Jane", "ECG"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    if when:
        ds.AcquisitionDateTime = when
    n = int(seconds * FS)
    t = np.arange(n) / FS
    data = np.stack([(1000 * np.sin(2 * np.pi * (k + 1) * t)).astype(np.int16) for k in range(len(LEADS))], axis=1)
    group = Dataset()
    group.MultiplexGroupTimeOffset = 0.0
    group.WaveformOriginality = "ORIGINAL"
    group.NumberOfWaveformChannels, group.NumberOfWaveformSamples = len(LEADS), n
    group.SamplingFrequency = FS
    group.MultiplexGroupLabel = "RHYTHM"
    channels = []
    for k, lead in enumerate(LEADS):
        source = Dataset()
        source.CodeValue, source.CodingSchemeDesignator, source.CodeMeaning = f"5.6.3-9-{k + 1}", "SCPECG", lead
        units = Dataset()
        units.CodeValue, units.CodingSchemeDesignator, units.CodeMeaning = "uV", "UCUM", "microvolt"
        ch = Dataset()
        ch.ChannelSourceSequence = Sequence([source])
        ch.ChannelSensitivity, ch.ChannelSensitivityCorrectionFactor, ch.ChannelBaseline = 1.0, 1.0, 0.0
        ch.ChannelSensitivityUnitsSequence = Sequence([units])
        ch.ChannelSampleSkew, ch.WaveformBitsStored = 0.0, 16
        channels.append(ch)
    group.ChannelDefinitionSequence = Sequence(channels)
    group.WaveformBitsAllocated, group.WaveformSampleInterpretation = 16, "SS"
    group.WaveformData = data.tobytes()
    ds.WaveformSequence = Sequence([group])
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def test_twelve_lead_ecg_leads_by_name(tmp_path: Path, read):
    ecg(tmp_path / "ecg1.dcm", "MRN-ECG-1")
    got = read([tmp_path], channels=("ecg_i", "II", "V5"), rate_hz=100.0, length=128, mrns=("MRN-ECG-1",))
    w = got.windows["MRN-ECG-1"]
    assert got.reasons() == [] and w.coverage == 1.0 and np.abs(w.values).max() > 0.5
    assert got.notes.mappings == {"dicom_waveform: Lead I": "ecg_i", "dicom_waveform: Lead II": "II",
                                  "dicom_waveform: Lead V5": "V5"}
    assert "Lead aVR" in got.notes.warnings()[0]


def test_without_acquisition_time_the_ecg_is_relative(tmp_path: Path, read):
    ecg(tmp_path / "a" / "ecg2", "MRN-ECG-2", when=None)  # no extension, as PACS exports often are
    got = read([tmp_path], channels=("II",), rate_hz=100.0, length=128, mrns=("MRN-ECG-2",))
    assert got.windows["MRN-ECG-2"].end == -1e12


def test_waveforms_among_dicom_images_are_signals_not_refused_images(tmp_path: Path):
    h = generate_federation(tmp_path / "fed", n_hospitals=1, patients_per_hospital=6, seed=1, missing_fraction=0.0)[0]
    mrn = sorted(p.stem for p in Path(h.wearables_dir).glob("*.csv"))[0]
    ecg(Path(h.dicom_dir) / "ecg" / "wave.dcm", mrn, when="20231231230000")
    cohort = CohortSpec(signal_channels=("II",), signal_rate_hz=100.0, signal_length=128)
    r = ingest_silo(fhir=[h.fhir_dir], dicom=[h.dicom_dir], wearables=[], cohort=cohort,
                    pseudonym_key=b"fedcare-test-pseudonym-key-32byt", index_date=date(2024, 1, 1)).report
    assert "no_pixel_data" not in r.modalities["image"].quarantined
    assert r.modalities["image"].unused.get("waveform_read_as_signal") == 1
    sig = r.modalities["signal"]
    assert sig.sources == {"dicom_waveform": 1} and sig.patients == 1 and sig.samples == 1


def test_the_image_reader_hands_its_waveforms_to_the_signal_readers_once(tmp_path: Path):
    """The image reader's header pass finds the waveforms; the signal step reads those files, and a waveform that is
    refused (no PatientID) is counted once, on the signal path, not also as a refused image."""
    h = generate_federation(tmp_path / "fed", n_hospitals=1, patients_per_hospital=6, seed=1, missing_fraction=0.0)[0]
    mrn = sorted(p.stem for p in Path(h.wearables_dir).glob("*.csv"))[0]
    good = ecg(Path(h.dicom_dir) / "ecg" / "wave.dcm", mrn, when="20231231230000")
    ecg(Path(h.dicom_dir) / "ecg" / "anonymous.dcm", "", when="20231231230000")
    found: list[list[Path]] = []
    cohort = CohortSpec(signal_channels=("II",), signal_rate_hz=100.0, signal_length=128)
    r = ingest_silo(fhir=[h.fhir_dir], dicom=[h.dicom_dir], wearables=[], cohort=cohort,
                    pseudonym_key=b"fedcare-test-pseudonym-key-32byt", index_date=date(2024, 1, 1),
                    steps=(*STEPS, lambda run: found.append(sorted(run.dicom_waveforms)))).report
    assert found == [sorted([good, good.with_name("anonymous.dcm")])]
    assert r.modalities["image"].unused.get("waveform_read_as_signal") == 2
    assert "no_patient_id" not in r.modalities["image"].quarantined
    assert r.modalities["signal"].quarantined == {"no_patient_id": 1}
    assert r.modalities["signal"].sources == {"dicom_waveform": 2} and r.modalities["signal"].patients == 1
