"""Live wearable streams into one silo's stream store; prints one JSON object on its last line.

Usage: python benchmarks/streams.py [--mqtt-messages 2000] [--mqtt-rate 0] [--http-messages 1000] [--samples 25]
                                    [--kill-messages 1000] [--workdir DIR]

A real Mosquitto broker (silo_node.streams.local_broker) and the real receiver process
(`fedcare silo stream`, MQTT + HTTP) writing its SQLite store. Phases, each on its own stretch of
sample times so the store tells them apart:
- mqtt: one device gateway publishes FHIR heart-rate Observations of `--samples` samples each (QoS 1)
  as fast as the broker takes them (or `--mqtt-rate` messages/s); messages and samples per second stored
  (first publish to last commit; at saturation this is the receiver's sustained rate),
  publish -> stored latency p50/p99 (publish call to the store's commit time of the message).
- http: 4 threads POST the same messages; a request returns after the commit.
- parse: the parser alone (`silo_node.streams.messages.parse_message`), messages per CPU second with
  FHIR validation of the elements read ("used-fields", the default) and of every element ("full").
- kill: publishing, the receiver is killed with SIGKILL mid-stream and started again; messages the
  broker acknowledged (PUBACK) vs samples stored once everything is delivered: `lost` must be 0.
The receiver's RSS is sampled from when it is ready until the kill (`rss_mb`: flat means no growth with load).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing it

import httpx  # noqa: E402
import numpy as np  # noqa: E402
import paho.mqtt.client as mqtt  # noqa: E402

from pipelines.wearables.stream_store import DB_NAME  # noqa: E402
from silo_node.streams.local_broker import free_port, local_broker  # noqa: E402
from silo_node.streams.messages import heart_rate_observation  # noqa: E402
from silo_node.streams.service import stream_store_dir  # noqa: E402

PHASE_START = {"mqtt": datetime(2024, 1, 1, tzinfo=timezone.utc), "http": datetime(2024, 2, 1, tzinfo=timezone.utc),
               "kill": datetime(2024, 3, 1, tzinfo=timezone.utc), "parse": datetime(2024, 4, 1, tzinfo=timezone.utc)}
PHASE_SPAN = timedelta(days=20)


class Receiver:
    """`fedcare silo stream` as its own process, with its RSS sampled every 0.2 s."""

    def __init__(self, root: Path, broker: int) -> None:
        self.root, self.state, self.http_port = root, root / "state", free_port()
        self.config = root / "node.toml"
        self.config.write_text(
            f'name = "bench"\ncoordinator = "127.0.0.1:1"\nstate_dir = "{self.state}"\ninsecure = true\n'
            f'[data]\ndataset = "d"\nwearables = ["{root}"]\n[streams]\nqueue_batches = 2000\n'
            f'[streams.rate]\nsamples_per_s = 1e9\nburst = 1e9\n'
            f'[streams.mqtt]\nhost = "127.0.0.1"\nport = {broker}\nclient_id = "silo-bench"\n'
            f'[streams.http]\nlisten = "127.0.0.1:{self.http_port}"\ninsecure = true\n')
        self.rss: list[float] = []
        self.proc: subprocess.Popen | None = None
        self.ready_at = 0
        threading.Thread(target=self._sample_rss, daemon=True).start()

    def start(self) -> None:
        log = open(self.root / "receiver.log", "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "fedcare", "silo", "stream", "--config", str(self.config)],
                                     stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        deadline = time.monotonic() + 180
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{self.http_port}/streams/health", timeout=1).status_code == 200 and \
                        (self.root / "receiver.log").read_bytes().count(b"subscribed") > 0:
                    self.ready_at = len(self.rss)  # RSS from here on: the receiver under load, imports done
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError(f"receiver did not start; see {self.root / 'receiver.log'}")
            time.sleep(0.2)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)
        self.proc.wait(timeout=30)

    def _sample_rss(self) -> None:
        while True:
            p = self.proc
            if p is not None and p.poll() is None:
                try:
                    text = Path(f"/proc/{p.pid}/status").read_text()
                    self.rss.append(int(text.split("VmRSS:")[1].split()[0]) / 1024)
                except (OSError, IndexError):
                    pass
            time.sleep(0.2)

    def rows(self, phase: str) -> np.ndarray:
        """(t, received) of the phase's stored samples."""
        lo = PHASE_START[phase].timestamp()
        with sqlite3.connect(stream_store_dir(self.state) / DB_NAME, timeout=30) as db:
            return np.array(db.execute("SELECT t, received FROM samples WHERE t >= ? AND t < ?",
                                       (lo, lo + PHASE_SPAN.total_seconds())).fetchall(), dtype=np.float64).reshape(-1, 2)


def _message(phase: str, k: int, samples: int) -> tuple[float, bytes]:
    start = PHASE_START[phase] + timedelta(seconds=samples * k)
    return start.timestamp(), heart_rate_observation(start, [60.0 + (k + i) % 40 for i in range(samples)])


def _figures(rx: Receiver, phase: str, sent_at: dict[float, float], samples: int) -> dict:
    rows = rx.rows(phase)
    first_commit = {t: r for t, r in rows if t in sent_at}  # a message's first sample marks it
    lat = np.array([first_commit[t] - sent_at[t] for t in first_commit]) * 1000
    span = rows[:, 1].max() - min(sent_at.values()) if rows.size else float("nan")
    return {"messages": len(sent_at), "samples_stored": int(rows.shape[0]),
            "messages_per_s": round(len(first_commit) / span, 1), "samples_per_s": round(rows.shape[0] / span, 1),
            "latency_ms_p50": round(float(np.percentile(lat, 50)), 1),
            "latency_ms_p99": round(float(np.percentile(lat, 99)), 1)}


def _wait_stored(rx: Receiver, phase: str, n: int, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while rx.rows(phase).shape[0] < n and time.monotonic() < deadline:
        time.sleep(0.2)


def _publisher(port: int, acked: list[int]) -> mqtt.Client:
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-gateway", protocol=mqtt.MQTTv311)
    pub.max_inflight_messages_set(100)
    pub.max_queued_messages_set(0)
    pub.on_publish = lambda c, u, mid, rc, props: acked.append(mid)
    pub.connect("127.0.0.1", port)
    pub.loop_start()
    return pub


def mqtt_phase(rx: Receiver, port: int, n: int, samples: int, rate: float) -> dict:
    acked: list[int] = []
    pub = _publisher(port, acked)
    sent_at = {}
    begin = time.time()
    for k in range(n):
        t0, body = _message("mqtt", k, samples)
        if rate > 0 and (wait := begin + k / rate - time.time()) > 0:
            time.sleep(wait)
        sent_at[t0] = time.time()
        pub.publish(f"fedcare/bench/watch-{k % 8}/MRN-{k % 50}", body, qos=1).wait_for_publish(30)
    _wait_stored(rx, "mqtt", n * samples)
    pub.loop_stop()
    return _figures(rx, "mqtt", sent_at, samples)


def http_phase(rx: Receiver, n: int, samples: int) -> dict:
    sent_at: dict[float, float] = {}
    url = f"http://127.0.0.1:{rx.http_port}/streams"
    with httpx.Client(timeout=30) as client:
        def post(k: int) -> int:
            t0, body = _message("http", k, samples)
            sent_at[t0] = time.time()
            while (r := client.post(f"{url}/band-{k % 8}/MRN-{k % 50}", content=body)).status_code == 503:
                time.sleep(float(r.headers.get("Retry-After", "1")))
            return r.status_code

        with ThreadPoolExecutor(4) as pool:
            codes = list(pool.map(post, range(n)))
    assert set(codes) == {201}, f"HTTP answers {sorted(set(codes))}"
    return _figures(rx, "http", sent_at, samples)


def kill_phase(rx: Receiver, port: int, n: int, samples: int) -> dict:
    acked: list[int] = []
    pub = _publisher(port, acked)
    done = threading.Event()

    def publish() -> None:
        for k in range(n):
            pub.publish(f"fedcare/bench/watch-{k % 8}/MRN-{k % 50}", _message("kill", k, samples)[1], qos=1)
            time.sleep(0.001)
        done.set()

    threading.Thread(target=publish, daemon=True).start()
    while rx.rows("kill").shape[0] < n * samples // 3:
        time.sleep(0.05)
    rx.kill()
    stored_at_kill = rx.rows("kill").shape[0]
    done.wait()
    deadline = time.monotonic() + 120
    while len(acked) < n and time.monotonic() < deadline:
        time.sleep(0.1)
    rx.start()
    _wait_stored(rx, "kill", len(acked) * samples, timeout=300)
    time.sleep(1.0)  # redeliveries of stored messages must not add rows
    stored = rx.rows("kill").shape[0]
    pub.loop_stop()
    return {"messages": n, "acked_by_broker": len(acked), "samples_stored_at_kill": stored_at_kill,
            "samples_acked": len(acked) * samples, "samples_stored": stored,
            "lost": max(0, len(acked) * samples - stored), "duplicated": max(0, stored - len(acked) * samples)}


def parse_phase(n: int, samples: int) -> dict:
    """The receiver's parser alone, in this process: messages per CPU second with each FHIR validation."""
    from pipelines.ehr.fhir_fields import FhirValidation
    from silo_node.streams.messages import parse_message

    bodies = [_message("parse", k, samples)[1] for k in range(n)]
    out = {}
    for validation in FhirValidation:
        cpu = time.process_time()
        for body in bodies:
            parse_message(body, max_bytes=1 << 20, max_samples=10_000, validation=validation)
        out[f"{validation.value}_messages_per_cpu_s"] = round(n / (time.process_time() - cpu), 1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mqtt-messages", type=int, default=2000)
    ap.add_argument("--http-messages", type=int, default=1000)
    ap.add_argument("--kill-messages", type=int, default=1000)
    ap.add_argument("--samples", type=int, default=25, help="samples per message (valueSampledData)")
    ap.add_argument("--mqtt-rate", type=float, default=0.0,
                    help="messages per second offered over MQTT (0: as fast as the broker takes them, i.e. saturation)")
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--parse-messages", type=int, default=2000, help="messages for the parser-only phase")
    ap.add_argument("--parse-only", action="store_true", help="only the parser phase (no broker, no receiver)")
    args = ap.parse_args()
    parse = parse_phase(args.parse_messages, args.samples)
    if args.parse_only:
        print(json.dumps({"benchmark": "streams", "samples_per_message": args.samples, "parse": parse}))
        return
    root = args.workdir or Path(tempfile.mkdtemp(prefix="fedcare-streams-"))
    root.mkdir(parents=True, exist_ok=True)
    with local_broker(root) as port:
        rx = Receiver(root, port)
        rx.start()
        try:
            out = {"benchmark": "streams", "samples_per_message": args.samples,
                   "mqtt_rate_offered": args.mqtt_rate or "max", "parse": parse,
                   "mqtt": mqtt_phase(rx, port, args.mqtt_messages, args.samples, args.mqtt_rate),
                   "http": http_phase(rx, args.http_messages, args.samples)}
            rss_loaded = rx.rss[rx.ready_at:]
            out["kill"] = kill_phase(rx, port, args.kill_messages, args.samples)
            out["rss_mb"] = {"ready": round(rss_loaded[0], 1), "after_mqtt_and_http": round(rss_loaded[-1], 1),
                             "max": round(max(rss_loaded), 1)}
        finally:
            rx.kill(signal.SIGTERM)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
