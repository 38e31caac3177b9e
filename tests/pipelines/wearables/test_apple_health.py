"""Apple Health export.xml in the layout the Health app writes (DTD, HealthData, Record elements with offsets)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

HEADER = """<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE HealthData [
<!ELEMENT HealthData (ExportDate,Me,(Record|Correlation|Workout|ActivitySummary)*)>
<!ATTLIST HealthData locale CDATA #REQUIRED>
<!ELEMENT Record ((MetadataEntry|HeartRateVariabilityMetadataList)*)>
<!ATTLIST Record type CDATA #REQUIRED unit CDATA #IMPLIED value CDATA #IMPLIED startDate CDATA #REQUIRED endDate CDATA #REQUIRED>
]>
<HealthData locale="en_US">
 <ExportDate value="2024-01-05 10:00:00 +0200"/>
 <Me HKCharacteristicTypeIdentifierDateOfBirth="1980-01-01" HKCharacteristicTypeIdentifierBiologicalSex="HKBiologicalSexFemale"/>
"""


def _record(kind: str, unit: str, when: datetime, value: str) -> str:
    d = when.strftime("%Y-%m-%d %H:%M:%S %z")
    return (f' <Record type="{kind}" sourceName="Apple Watch" sourceVersion="5.2" device="&lt;&lt;HKDevice: 0x2837&gt;&gt;" '
            f'unit="{unit}" creationDate="{d}" startDate="{d}" endDate="{d}" value="{value}">\n'
            '  <MetadataEntry key="HKMetadataKeyHeartRateMotionContext" value="0"/>\n </Record>\n')


def _export(folder: Path, n: int = 60, *, bad: bool = False) -> Path:
    tz = timezone(timedelta(hours=2))
    t0 = datetime(2024, 1, 1, 0, 30, tzinfo=tz)  # 2023-12-31 22:30 UTC: before the end of the index date in UTC
    body = [HEADER]
    for i in range(n):
        body.append(_record("HKQuantityTypeIdentifierHeartRate", "count/min", t0 + timedelta(seconds=5 * i), str(60 + i % 9)))
        if i % 12 == 0:
            body.append(_record("HKQuantityTypeIdentifierStepCount", "count", t0 + timedelta(seconds=5 * i), "27"))
    body.append(_record("HKQuantityTypeIdentifierBodyMass", "kg", t0, "61"))
    if bad:
        body.append(_record("HKQuantityTypeIdentifierHeartRate", "count/min", t0, "n/a").replace(t0.strftime("%Y"), "20xx"))
    body.append(' <Workout workoutActivityType="HKWorkoutActivityTypeWalking" duration="10"/>\n</HealthData>\n')
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "export.xml").write_text("".join(body))
    return folder / "export.xml"


def test_heart_rate_and_steps_from_the_export_folder(tmp_path: Path, read):
    _export(tmp_path / "MRN-A1" / "apple_health_export", bad=True)
    got = read([tmp_path], channels=("heart_rate", "steps"), rate_hz=0.2, length=32, mrns=("MRN-A1",))
    w = got.windows["MRN-A1"]
    assert got.reasons() == [] and w.coverage > 0.8  # steps end 55 s before the heart rate
    assert w.end == (datetime(2023, 12, 31, 22, 30, tzinfo=timezone.utc) + timedelta(seconds=5 * 59)).timestamp() - \
        datetime(2024, 1, 2, tzinfo=timezone.utc).timestamp()  # the +0200 offset is applied
    assert got.notes.devices == {"apple_health": 1}
    assert got.notes.mappings == {"apple_health: HKQuantityTypeIdentifierHeartRate": "heart_rate",
                                  "apple_health: HKQuantityTypeIdentifierStepCount": "steps"}
    assert "HKQuantityTypeIdentifierBodyMass" in got.notes.warnings()[0]


def test_a_mapping_adds_a_type_and_names_the_patient_by_file(tmp_path: Path, read):
    from pipelines.wearables.mapping import WearableMapping

    path = _export(tmp_path)
    path.rename(tmp_path / "MRN-A2.xml")
    got = read([tmp_path], channels=("weight",), length=1 * 8, mrns=("MRN-A2",),
               mapping=WearableMapping(channels={"HKQuantityTypeIdentifierBodyMass": "weight"}))
    assert got.notes.mappings == {"apple_health: HKQuantityTypeIdentifierBodyMass": "weight"}
    assert got.stats["records"] == 0  # one sample only: the window is refused as too short, not counted
    assert got.reasons() == ["too_short"]


def test_truncated_export_is_quarantined(tmp_path: Path, read):
    path = _export(tmp_path / "MRN-A3")
    path.write_bytes(path.read_bytes()[:-300])
    got = read([tmp_path], channels=("heart_rate",))
    assert got.reasons() == ["bad_xml"] and got.stats["inputs_read"] == 1


def test_files_of_the_export_no_reader_knows_are_counted_not_dropped_silently(tmp_path: Path, read):
    folder = tmp_path / "MRN-A4" / "apple_health_export"
    _export(folder)
    (folder / "export_cda.xml").write_text("<ClinicalDocument/>")
    (folder / "workout-routes").mkdir()
    (folder / "workout-routes" / "route_2024-01-01.gpx").write_text("<gpx/>")
    got = read([tmp_path], channels=("heart_rate",), rate_hz=0.2, length=16, mrns=("MRN-A4",))
    assert set(got.windows) == {"MRN-A4"} and got.stats["unused_not_a_wearable_export"] == 2


def test_entity_expansion_bomb_is_refused_not_expanded(tmp_path: Path, read):
    lol = "".join(f'<!ENTITY l{k} "{"&l%d;" % (k - 1) * 10 if k else "lol"}">' for k in range(10))
    (tmp_path / "MRN-A5").mkdir()
    (tmp_path / "MRN-A5" / "export.xml").write_text(f'<?xml version="1.0"?><!DOCTYPE HealthData [{lol}]>'
                                                    '<HealthData><Record type="x" value="&l9;"/></HealthData>')
    got = read([tmp_path], channels=("heart_rate",))
    assert got.reasons() == ["bad_xml"]  # expat's amplification limit (>= 2.4) stops it
