"""kill -9 of `fedcare silo stream` while a device publishes: every message the broker acknowledged is stored."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from pipelines.wearables.stream_store import DB_NAME
from silo_node.streams.service import stream_store_dir

from silo_node.streams.messages import heart_rate_observation
from .test_streams import START, wait_for

PER_MESSAGE = 25


def stored(state: Path) -> int:
    path = stream_store_dir(state) / DB_NAME
    if not path.exists():
        return 0
    with sqlite3.connect(path, timeout=10) as db:
        try:
            return int(db.execute("SELECT COUNT(*) FROM samples").fetchone()[0])
        except sqlite3.OperationalError:  # the receiver has not created the table yet
            return 0


@pytest.mark.slow
def test_kill_9_of_the_stream_receiver_loses_nothing_acknowledged(tmp_path: Path, broker: int):
    state = tmp_path / "state"
    config = tmp_path / "node.toml"
    config.write_text(f'name = "st-mary"\ncoordinator = "127.0.0.1:1"\nstate_dir = "{state}"\ninsecure = true\n'
                      f'[data]\ndataset = "d"\nwearables = ["{tmp_path}"]\n'
                      f'[streams.mqtt]\nhost = "127.0.0.1"\nport = {broker}\nclient_id = "silo-st-mary"\n')
    log = open(tmp_path / "receiver.log", "ab")

    def receiver() -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "fedcare", "silo", "stream", "--config", str(config)],
                                stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})

    proc = receiver()
    wait_for(lambda: b"subscribed" in (tmp_path / "receiver.log").read_bytes(), timeout=120)
    acked = []  # mids the broker acknowledged (PUBACK): from then on the message is the silo's to keep
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="watch-gw", protocol=mqtt.MQTTv311)
    pub.on_publish = lambda c, u, mid, rc, props: acked.append(mid)
    pub.connect("127.0.0.1", broker)
    pub.loop_start()
    n_messages = 400

    def publish() -> None:
        for k in range(n_messages):
            body = heart_rate_observation(START + timedelta(seconds=PER_MESSAGE * k), [60.0 + k % 30] * PER_MESSAGE)
            pub.publish(f"fedcare/st-mary/watch-{k % 4}/MRN-{k % 10}", body, qos=1)
            time.sleep(0.005)

    sender = threading.Thread(target=publish)
    sender.start()
    wait_for(lambda: stored(state) >= 20 * PER_MESSAGE, timeout=60)
    proc.send_signal(signal.SIGKILL)  # mid-stream: messages in flight, some delivered but not yet committed
    proc.wait(timeout=30)
    at_kill = stored(state)
    sender.join()
    wait_for(lambda: len(acked) == n_messages, timeout=60)
    assert at_kill < n_messages * PER_MESSAGE, "the kill came after the stream ended; it proves nothing"
    proc = receiver()
    try:
        with contextlib.suppress(AssertionError):  # the count below says how many were lost
            wait_for(lambda: stored(state) >= n_messages * PER_MESSAGE, timeout=120)
        time.sleep(0.5)  # redeliveries of messages already stored must not add rows
        assert stored(state) == n_messages * PER_MESSAGE, \
            f"{n_messages * PER_MESSAGE - stored(state)} samples the broker acknowledged were lost"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        pub.loop_stop()
