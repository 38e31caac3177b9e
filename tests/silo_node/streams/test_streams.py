"""Live wearable streams into the silo's stream store: a real Mosquitto broker, the real HTTP app, real SQLite."""

from __future__ import annotations

import json
import threading
import time
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
import pytest
from starlette.testclient import TestClient

from compliance.audit import AuditLog
from pipelines.deid import Deidentifier
from pipelines.wearables.mapping import WearableMapping, to_recording
from pipelines.wearables.recordings import window
from pipelines.wearables.stream_store import SampleBatch, StreamStore
from silo_node.config import NodeConfig, SpecError
from silo_node.streams.http import stream_app
from silo_node.streams.service import StreamService, stream_store_dir
from silo_node.streams.settings import HttpSettings, MqttSettings, RateSettings, StreamsConfig

from silo_node.streams.messages import heart_rate_observation

KEY = b"k" * 32
START = datetime(2024, 3, 1, 8, 0, tzinfo=timezone.utc)
INDEX = date(2024, 3, 2)


def wait_for(check, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached within {timeout} s")
        time.sleep(0.05)


def publisher(port: int) -> mqtt.Client:
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="device-gw", protocol=mqtt.MQTTv311)
    c.connect("127.0.0.1", port)
    c.loop_start()
    return c


def windows(store: StreamStore, at: float | None = None) -> dict[str, np.ndarray]:
    snap = store.snapshot(at)
    out = {}
    for dev in snap.recordings():
        rec, _ = to_recording(dev, ("heart_rate",), WearableMapping())
        out[dev.patient_id] = window(rec, ("heart_rate",), rate_hz=1.0, length=60, index_date=INDEX).values
    return out


def test_mqtt_messages_are_stored_deidentified_and_windowed_malformed_ones_quarantined(tmp_path: Path, broker: int,
                                                                                       node_audit: AuditLog):
    cfg = StreamsConfig(mqtt=MqttSettings(host="127.0.0.1", port=broker, client_id="silo-a"))
    service = StreamService(cfg, state_dir=tmp_path, pseudonym_key=KEY, audit=node_audit)
    threading.Thread(target=service.mqtt.run, daemon=True).start()
    assert service.mqtt.connected.wait(10)
    pub = publisher(broker)
    for k in range(4):  # 4 x 25 samples at 1 Hz for patient MRN-7
        values = [70.0 + (k * 25 + i) % 5 for i in range(25)]
        pub.publish("fedcare/st-mary/watch-1/MRN-7", heart_rate_observation(START + timedelta(seconds=25 * k), values),
                    qos=1).wait_for_publish(5)
    pub.publish("fedcare/st-mary/watch-1/MRN-7", b"{not json", qos=1).wait_for_publish(5)
    wait_for(lambda: service.store.counts()["samples"] == 100 and service.store.counts()["quarantined"])
    counts = service.store.counts()
    assert counts["quarantined"] == {"bad_json": 1} and counts["samples"] == 100
    pub.loop_stop()
    service.stop()

    with StreamStore(stream_store_dir(tmp_path)) as store:
        got = windows(store)
        rows = store._db.execute("SELECT DISTINCT patient, device FROM samples").fetchall()
    pseudonym = Deidentifier(KEY).pseudonym("MRN-7")
    assert list(got) == [pseudonym]  # the MRN is never stored, only the pseudonym the EHR of MRN-7 also gets
    assert rows == [(pseudonym, Deidentifier(KEY).reference("device:watch-1"))]
    assert got[pseudonym].shape == (1, 60) and np.abs(got[pseudonym]).max() > 0


def _intake_app(tmp_path: Path, audit: AuditLog, rate: RateSettings = RateSettings(),
                **streams: object) -> tuple[StreamService, TestClient]:
    cfg = StreamsConfig(http=HttpSettings(insecure=True), rate=rate, **streams)
    service = StreamService(cfg, state_dir=tmp_path, pseudonym_key=KEY, audit=audit)
    return service, TestClient(stream_app(service.intake))


def test_http_accepts_fhir_observations_and_open_mhealth_points_and_refuses_malformed_ones(tmp_path: Path,
                                                                                           node_audit: AuditLog):
    service, client = _intake_app(tmp_path, node_audit)
    quantity = {"resourceType": "Observation", "status": "final", "effectiveDateTime": "2024-03-01T08:00:00Z",
                "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
                "valueQuantity": {"value": 72, "unit": "beats/minute", "system": "http://unitsofmeasure.org",
                                  "code": "/min"}}
    omh = {"header": {"schema_id": {"namespace": "omh", "name": "heart-rate", "version": "1.1"}},
           "body": {"heart_rate": {"value": 64, "unit": "beats/min"},
                    "effective_time_frame": {"date_time": "2024-03-01T08:00:01Z"}}}
    r = client.post("/streams/band-2/MRN-9", content=json.dumps([quantity, omh]))
    assert r.status_code == 201, r.text
    r = client.post("/streams/band-2/MRN-9", content=heart_rate_observation(START + timedelta(seconds=2), [61, 62, 63]))
    assert r.status_code == 201
    bad_unit = {**omh, "body": {**omh["body"], "heart_rate": {"value": 1, "unit": "Hz"}}}
    r = client.post("/streams/band-2/MRN-9", content=json.dumps(bad_unit))
    assert r.status_code == 422 and r.json()["reason"] == "unknown_unit"
    future = heart_rate_observation(datetime.now(timezone.utc) + timedelta(days=2), [70])
    assert client.post("/streams/band-2/MRN-9", content=future).json()["reason"] == "bad_timestamp"
    service.writer.close()
    counts = service.store.counts()
    assert counts["samples"] == 5 and counts["quarantined"] == {"bad_timestamp": 1, "unknown_unit": 1}
    (dev,) = service.store.snapshot().recordings()
    assert sorted(dev.channels) == ["heart-rate", "heart_rate"]  # OMH schema name: mapped by alias at windowing


def test_a_device_over_its_rate_limit_is_refused_with_a_reason_and_counted(tmp_path: Path, node_audit: AuditLog):
    service, client = _intake_app(tmp_path, node_audit, RateSettings(samples_per_s=0.01, burst=30))
    first = client.post("/streams/w/MRN-1", content=heart_rate_observation(START, [70.0] * 25))
    second = client.post("/streams/w/MRN-1", content=heart_rate_observation(START + timedelta(seconds=25), [70.0] * 25))
    other = client.post("/streams/w2/MRN-1", content=heart_rate_observation(START + timedelta(seconds=25), [70.0] * 25))
    assert (first.status_code, second.status_code, other.status_code) == (201, 429, 201)
    assert second.json()["reason"] == "rate_limited" and int(second.headers["Retry-After"]) >= 1
    service.writer.close()
    assert service.store.counts() == {"samples": 50, "quarantined": {}, "refused": {"rate_limited": 1}}
    assert service.store.snapshot().audit()["refused"] == {"rate_limited": 1}  # in the study's data_ingested event
    (event,) = [e.fields for e in node_audit.entries() if e.event == "stream_refused"]  # and in the node's log at once
    assert (event["outcome"], event["reason"], event["via"], event["count"]) == ("refused", "rate_limited", "http", 1)


def test_a_snapshot_gives_the_same_windows_while_new_data_keeps_arriving(tmp_path: Path):
    pid = Deidentifier(KEY).pseudonym("MRN-3")

    def batch(offset_s: float, level: float) -> SampleBatch:
        t = START.timestamp() + offset_s + np.arange(60.0)
        return SampleBatch(pid, "dev", "heart_rate", t, np.full(60, level))

    with StreamStore(tmp_path) as store:
        store.append([batch(0, 70.0)])
        snap = store.snapshot()
        before = windows(store, snap.at)
        time.sleep(0.01)
        store.append([batch(60, 90.0), batch(0, 99.0)])  # newer samples, and a redelivery of stored ones
        again = store.snapshot(snap.at)
        assert (again.upto, again.samples, again.sha256) == (snap.upto, snap.samples, snap.sha256)
        np.testing.assert_array_equal(windows(store, snap.at)[pid], before[pid])
        latest = windows(store)[pid]
        assert store.snapshot().samples == 120  # the redelivered samples are stored once, the first value kept
        assert not np.array_equal(latest, before[pid])


@pytest.mark.parametrize("section, expected", [
    ("[streams]\n", "[streams.mqtt] or [streams.http]"),
    ("[streams.http]\nlisten = \"10.0.0.5:8443\"\n", "cert and key for HTTPS"),
    ("[streams.mqtt]\nhost = \"b\"\ncert = \"c.pem\"\n", "both cert and key"),
])
def test_a_streams_section_that_cannot_work_is_refused_naming_the_field(tmp_path: Path, section: str, expected: str):
    config = tmp_path / "node.toml"
    config.write_text(f'name = "s"\ncoordinator = "c:1"\nstate_dir = "st"\ninsecure = true\n[data]\ndataset = "d"\n'
                      f'fhir = ["f"]\n{section}')
    with pytest.raises(SpecError, match="streams") as e:
        NodeConfig.load(config)
    assert expected in str(e.value)


def test_the_https_endpoint_requires_a_device_certificate_of_the_hospital_ca(tmp_path: Path, node_audit: AuditLog):
    import ssl

    import httpx

    from fedcare.pki import init_ca, issue
    from silo_node.streams.http import serve
    from silo_node.streams.local_broker import free_port

    ca = init_ca(tmp_path / "pki")
    cert, key = issue(tmp_path / "pki", name="streams", role="coordinator")  # a server certificate (serverAuth)
    gw_cert, gw_key = issue(tmp_path / "pki", name="gateway", role="silo")
    port = free_port()
    cfg = StreamsConfig(http=HttpSettings(listen=f"127.0.0.1:{port}", cert=cert, key=key, ca_cert=ca))
    service = StreamService(cfg, state_dir=tmp_path, pseudonym_key=KEY, audit=node_audit)
    threading.Thread(target=serve, args=(cfg.http, service.intake), daemon=True).start()  # ends with the test process
    url = f"https://127.0.0.1:{port}/streams"
    device = ssl.create_default_context(cafile=str(ca))
    device.load_cert_chain(str(gw_cert), str(gw_key))

    def up() -> bool:
        try:
            return httpx.get(f"{url}/health", verify=device, timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(up, timeout=30)
    with pytest.raises(httpx.HTTPError):  # no client certificate: the handshake fails
        httpx.post(f"{url}/w/MRN-1", content=heart_rate_observation(START, [70.0]), timeout=5,
                   verify=ssl.create_default_context(cafile=str(ca)))
    with pytest.raises(httpx.HTTPError):  # plain HTTP is not served
        httpx.post(f"http://127.0.0.1:{port}/streams/w/MRN-1", content=b"{}", timeout=5)
    r = httpx.post(f"{url}/w/MRN-1", content=heart_rate_observation(START, [70.0, 71.0]), verify=device, timeout=5)
    assert r.status_code == 201 and service.store.counts()["samples"] == 2
