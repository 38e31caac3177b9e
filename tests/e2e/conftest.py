"""Real processes for end-to-end tests: a coordinator and silo nodes over loopback gRPC."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest

from compliance.keys import write_secret_file
from fedcare.demo import free_port, write_node_config
from fedcare.researcher import ResearcherClient
from pipelines.synthetic import HospitalFiles, generate_federation
from silo_node.pseudonym_key import KEY_FILE


@dataclass
class Cluster:
    root: Path
    target: str
    hospitals: list[HospitalFiles]
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
        log = open(self.root / f"{name}.log", "ab")
        proc = subprocess.Popen([sys.executable, "-m", "fedcare", *args], stdout=log, stderr=subprocess.STDOUT, env=env)
        self.procs[name] = proc
        return proc

    def start_coordinator(self) -> ResearcherClient:
        self._spawn("coordinator", ["coordinator", "serve", "--state-dir", str(self.root / "coordinator"),
                                    "--listen", self.target, "--insecure"])
        channel = grpc.insecure_channel(self.target)
        grpc.channel_ready_future(channel).result(timeout=60)
        return ResearcherClient(channel, target=self.target)

    def start_regional(self, name: str, *, expected_silos: int) -> str:
        """A regional aggregator between this cluster's coordinator and the silos started `via` it."""
        listen = f"127.0.0.1:{free_port()}"
        self._spawn(name, ["coordinator", "regional", "--name", name, "--upstream", self.target, "--listen", listen,
                           "--state-dir", str(self.root / name), "--insecure", "--expected-silos", str(expected_silos)])
        grpc.channel_ready_future(grpc.insecure_channel(listen)).result(timeout=60)
        return listen

    def fix_pseudonym_key(self, hospital: HospitalFiles) -> None:
        """The same pseudonym key for this hospital in every run, so its train/test split is the same: with about 40
        test patients a silo, a fresh random split moves a study's AUROC by more than a test can bound."""
        write_secret_file(self.root / "silos" / hospital.name / "state" / KEY_FILE,
                          hashlib.sha256(f"e2e-{hospital.name}".encode()).digest())

    def start_silo(self, hospital: HospitalFiles, *, via: str | None = None, **overrides) -> Path:
        cfg = self.root / "silos" / hospital.name / "node.toml"
        if not cfg.exists():
            write_node_config(cfg, name=hospital.name, coordinator=via or self.target, data=hospital,
                              dataset=f"{hospital.name}-ehr", **overrides)
        self._spawn(hospital.name, ["silo", "run", "--config", str(cfg)])
        return cfg

    def kill(self, name: str, sig: int = 9) -> None:
        proc = self.procs[name]
        proc.send_signal(sig)
        proc.wait(timeout=30)

    def log(self, name: str) -> str:
        return (self.root / f"{name}.log").read_text(errors="replace")

    def wait_for_log(self, name: str, text: str, *, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.log(name):
            if time.monotonic() > deadline or self.procs[name].poll() is not None:
                raise AssertionError(f"{name} never logged {text!r}:\n{self.log(name)[-3000:]}")
            time.sleep(0.5)

    def wait_for(self, client: ResearcherClient, study_id: str, predicate, *, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status, summary = client.status(study_id)
            if predicate(status, summary):
                return summary
            if status.state == "failed":
                raise AssertionError(f"study failed: {status.error}")
            time.sleep(0.5)
        logs = "\n".join(f"--- {n}\n{self.log(n)[-3000:]}" for n in self.procs)
        raise AssertionError(f"timed out waiting for study {study_id}\n{logs}")

    def stop(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.kill()
        for p in self.procs.values():
            p.wait(timeout=30)


@pytest.fixture(scope="session")
def hospitals(tmp_path_factory) -> list[HospitalFiles]:
    """Three synthetic hospitals, generated once for the session: tests read them, none writes into them."""
    return generate_federation(tmp_path_factory.mktemp("data"), n_hospitals=3, patients_per_hospital=200, seed=1)


@pytest.fixture
def cluster(tmp_path: Path, hospitals) -> Iterator[Cluster]:
    c = Cluster(root=tmp_path, target=f"127.0.0.1:{free_port()}", hospitals=hospitals)
    yield c
    c.stop()


@dataclass
class Federation:
    """A running coordinator and the three hospitals' silos with the demo's node config."""

    cluster: Cluster
    client: ResearcherClient


@pytest.fixture(scope="module")
def federation(tmp_path_factory, hospitals) -> Iterator[Federation]:
    """One federation for a module's tests that each run their own study on it and change nothing
    else: starting a coordinator and three silos (each importing torch and MONAI) is most of a
    short study's time."""
    c = Cluster(root=tmp_path_factory.mktemp("federation"), target=f"127.0.0.1:{free_port()}", hospitals=hospitals)
    try:
        client = c.start_coordinator()
        for h in hospitals:
            c.fix_pseudonym_key(h)  # the studies' metrics are compared with bounds
            c.start_silo(h)
        yield Federation(c, client)
    finally:
        c.stop()
