"""`fedcare demo`: a whole federation on one machine, with no set-up.

Generates synthetic hospitals in real formats, starts the coordinator and one process per
silo talking gRPC over loopback, submits a study (DP + CKKS by default), follows it with a
progress bar, and writes the results folder: summary.json, the final model, the audit logs
and the compliance report.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import tomli_w
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from compliance import build_report
from coordinator.api.study import AggregationSpec, AnalysisSpec, ModelSpec, PrivacySpec, StudySpec, TrainingSpec, analysis_study
from fedcare.analysis_report import cohort_rows
from fedcare.researcher import ResearcherClient, ResearcherError
from pipelines.synthetic import generate_federation

if TYPE_CHECKING:  # the consoles import torch and MONAI: seconds a refused option must not wait for
    from fedcare.demo_console import DemoConsoles

log = logging.getLogger(__name__)
ENROLLMENT_TIMEOUT_S = 900.0
STATUS_PATIENCE_S = 300.0  # how long the demo asks a running but slow coordinator for the study's status


@dataclass
class DemoOptions:
    out: Path
    rounds: int = 5
    silos: int = 3
    seed: int = 0
    patients: int = 300
    dp: bool = True
    encryption: str = "ckks-exact"
    rule: str = "fedavg"
    epsilon: float = 8.0
    local_epochs: int = 3
    attack: str | None = None  # robustness demos: the first ceil(malicious × silos) silos attack
    malicious: float = 0.0
    timeout_s: float = 1800.0
    console: bool = False  # also serve the researcher and site consoles (fedcare.demo_console) until stopped
    analysis: bool = False  # first an analysis study: the cohort table across hospitals, before training


def copy_sqlite(src: Path, dst: Path) -> None:
    """A consistent copy of a live SQLite database (WAL included), via SQLite's backup API."""
    with sqlite3.connect(src) as source, sqlite3.connect(dst) as target:
        source.backup(target)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def demo_spec(opts: DemoOptions) -> StudySpec:
    return StudySpec(
        name="demo-heart-failure",
        description="Synthetic multimodal heart-failure prediction across hospitals (fedcare demo).",
        # sized for DP-SGD at ε = 8 on ~165 training patients per hospital (#14, measured with benchmarks/utility.py):
        # fixed image/signal statistics and linear heads (2.2k parameters, not 31k), batches of 64, lr 0.3;
        # momentum 0.5, not 0.9: with 0.9 the DP noise made the validation loss jump after round 2-3
        # (benchmarks/demo_learning.py)
        model=ModelSpec(image_encoder="features", signal_encoder="features", embed_dim=8, ehr_hidden=16, fusion="concat"),
        training=TrainingSpec(rounds=opts.rounds, local_epochs=opts.local_epochs, batch_size=64, learning_rate=0.3,
                              momentum=0.5,
                              min_silos=max(1, opts.silos - 1), expected_silos=opts.silos, seed=opts.seed,
                              # every silo the demo started is waited for (a slow one on a loaded machine
                              # too); one that dies ends the demo, one that is late joins the next round
                              enrollment_timeout_s=ENROLLMENT_TIMEOUT_S, round_timeout_s=300.0),
        privacy=PrivacySpec(dp=opts.dp, target_epsilon=opts.epsilon if opts.dp else None, delta=1e-5,
                            max_grad_norm=1.0, encryption=opts.encryption),  # type: ignore[arg-type]
        aggregation=AggregationSpec(rule=opts.rule),  # type: ignore[arg-type]
    )


def demo_analysis_spec(opts: DemoOptions) -> StudySpec:
    """The demo's cohort overview: the training study's cohort, with histograms of a few features."""
    return analysis_study(
        demo_spec(opts), name="demo-cohort-overview",
        description="Who is in the cohort at each hospital, before training (fedcare demo --analysis).",
        analysis=AnalysisSpec(bins={"age": (30.0, 45.0, 60.0, 75.0, 90.0), "glucose": (70.0, 100.0, 126.0, 200.0),
                                    "systolic_bp": (90.0, 120.0, 140.0, 160.0)}))


def _spawn(args: list[str], log_path: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    log_file = open(log_path, "ab")  # noqa: SIM115 - owned by the child for its lifetime
    return subprocess.Popen([sys.executable, "-m", "fedcare", *args], stdout=log_file, stderr=subprocess.STDOUT, env=env)


def write_node_config(path: Path, *, name: str, coordinator: str, data: Any, dataset: str, **overrides: Any) -> None:
    """A demo node.toml; `overrides` replace top-level keys or update the tables (privacy, approval, ...)."""
    config = {
        "name": name,
        "coordinator": coordinator,
        "state_dir": "state",
        "insecure": True,
        "poll_wait_s": 10.0,
        "data": {"dataset": dataset, "fhir": [str(data.fhir_dir)], "dicom": [str(data.dicom_dir)],
                 "wearables": [str(data.wearables_dir)],
                 # every demo hospital shares this machine: each parses in its own process, not on every core
                 "workers": {"processes": 1}},
        "privacy": {"epsilon_cap": 20.0, "delta": 1e-5},
        "approval": {"mode": "auto", "allowed_modalities": ["ehr", "image", "signal"], "max_epsilon": 10.0,
                     "require_dp": False},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key] = {**config[key], **value}
        else:
            config[key] = value
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(tomli_w.dumps(config))


class Demo:
    def __init__(self, opts: DemoOptions, console: Console | None = None) -> None:
        self.opts = opts
        self.console = console or Console(stderr=True)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def run(self) -> dict[str, Any]:
        o = self.opts
        out = o.out.resolve()
        if out.exists():
            shutil.rmtree(out)
        (out / "logs").mkdir(parents=True)
        self.console.print(f"[bold]fedcare demo[/]: {o.silos} hospitals, {o.rounds} rounds, "
                           f"DP {'on' if o.dp else 'off'}, encryption {o.encryption}, rule {o.rule}")
        with Progress(TextColumn("generating synthetic hospitals (FHIR, DICOM, wearable CSV): {task.description}"),
                      BarColumn(), TextColumn("{task.completed}/{task.total} patients"), TimeElapsedColumn(),
                      console=self.console) as progress:
            task = progress.add_task("", total=o.silos * o.patients)
            hospitals = generate_federation(out / "data", n_hospitals=o.silos, patients_per_hospital=o.patients,
                                            seed=o.seed,
                                            on_patient=lambda name: progress.update(task, advance=1, description=name))
        target = f"127.0.0.1:{free_port()}"
        try:
            self.procs["coordinator"] = _spawn(["coordinator", "serve", "--state-dir", str(out / "coordinator"),
                                                "--listen", target, "--insecure"], out / "logs" / "coordinator.log")
            channel = grpc.insecure_channel(target)
            self._wait_ready(channel, target)
            attackers = math.ceil(o.malicious * o.silos) if o.attack else 0
            for i, h in enumerate(hospitals):
                cfg = out / "silos" / h.name / "node.toml"
                extra = {"attack": {"kind": o.attack}} if i < attackers else {}
                write_node_config(cfg, name=h.name, coordinator=target, data=h, dataset=f"{h.name}-synthetic", **extra)
                studies = "2" if o.analysis else "1"
                self.procs[h.name] = _spawn(["silo", "run", "--config", str(cfg), "--exit-after-studies", studies],
                                            out / "logs" / f"{h.name}.log")
            client = ResearcherClient(channel, target=target)
            consoles = self._open_consoles(out, target, [h.name for h in hospitals]) if o.console else None
            if o.analysis:
                self._cohort_overview(client, out)
            spec = demo_spec(o)
            (out / "study.toml").write_text(tomli_w.dumps(spec.model_dump(mode="json", exclude_none=True)))
            self.console.print(f"study spec written to {out / 'study.toml'}: edit it and `fedcare study submit` it "
                               "to a real coordinator (more specs in examples/)")
            study_id = client.submit(spec)
            if consoles is not None:
                consoles.follow(study_id)
            self._follow(client, study_id, silos=[h.name for h in hospitals])
            client.results(study_id, out)
            self._collect_logs(out, [h.name for h in hospitals])
            with self.console.status("writing the compliance report (HTML and PDF)…"):
                logs = sorted((out / "audit").glob("*.audit.sqlite"))
                ledgers = sorted((out / "audit").glob("*.privacy-ledger.sqlite"))
                for fmt in ("html", "pdf"):
                    build_report(logs=logs, out=out / "audit" / f"report.{fmt}", fmt=fmt, study=study_id, ledger=ledgers)
            if consoles is not None:
                self._hold(consoles)
        finally:
            self._stop_all()
        return json.loads((out / "summary.json").read_text())

    def _cohort_overview(self, client: ResearcherClient, out: Path) -> None:
        """Run the analysis study, write its results to out/analysis and show the cohort table."""
        study_id = client.submit(demo_analysis_spec(self.opts))
        deadline = time.monotonic() + self.opts.timeout_s
        with self.console.status("cohort overview: each hospital computes and releases its statistics…"):
            while not self._finished(self._status(client, study_id)[0], deadline):
                time.sleep(1.0)
        paths = client.results(study_id, out / "analysis")
        table = Table(title=f"cohort across hospitals (study {study_id})")
        for col in ("figure", "pooled", "note"):
            table.add_column(col)
        for row in cohort_rows(json.loads(paths["json"].read_text())):
            table.add_row(*row)
        self.console.print(table)
        self.console.print(f"cohort overview in {out / 'analysis'}: analysis.json, analysis.csv, analysis.html")

    def _open_consoles(self, out: Path, target: str, silos: list[str]) -> DemoConsoles:
        from fedcare.demo_console import open_consoles

        consoles = open_consoles(out, coordinator=target, spawn=_spawn, free_port=free_port,
                                 silo_configs={s: out / "silos" / s / "node.toml" for s in silos})
        self.procs.update(consoles.procs)
        for line in consoles.lines():
            self.console.print(line, highlight=False, soft_wrap=True)
        return consoles

    def _hold(self, consoles: DemoConsoles) -> None:
        """Keep the consoles up after the study until Ctrl-C."""
        for line in [*consoles.lines(), "the consoles stay up until you press Ctrl-C"]:
            self.console.print(line, highlight=False, soft_wrap=True)
        try:
            while all(consoles.procs[name].poll() is None for name in consoles.procs):
                time.sleep(1.0)
        except KeyboardInterrupt:
            return
        self._check_alive()

    def _wait_ready(self, channel: grpc.Channel, target: str) -> None:
        try:
            grpc.channel_ready_future(channel).result(timeout=60)
        except grpc.FutureTimeoutError:
            raise ResearcherError(f"the demo coordinator did not start on {target}; see logs/coordinator.log") from None

    def _check_alive(self) -> None:
        for name, p in self.procs.items():
            code = p.poll()
            if code not in (None, 0):
                raise ResearcherError(f"{name} exited with status {code}; see logs/{name}.log in the results folder")

    def _follow(self, client: ResearcherClient, study_id: str, *, silos: list[str]) -> None:
        deadline = time.monotonic() + self.opts.timeout_s
        columns = [TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total} rounds"),
                   TextColumn("{task.fields[metric]}"), TimeElapsedColumn()]
        with Progress(*columns, console=self.console) as progress:
            bar = progress.add_task(f"study {study_id}", total=self.opts.rounds, metric="")
            while True:
                st, summary = self._status(client, study_id)
                done_rounds = [r for r in summary.get("rounds", []) if r.get("metrics") and r["round"] > 0]
                metric = ""
                if summary.get("rounds") and summary["rounds"][-1].get("metrics"):
                    m = summary["rounds"][-1]["metrics"]
                    metric = f"AUROC {m.get('auroc', float('nan')):.3f}  acc {m.get('accuracy', float('nan')):.3f}"
                description = f"study {st.state}"
                if st.state == "enrolling":  # say who is still being waited for, by name
                    missing = sorted(set(silos) - set(st.silos))
                    description = f"enrolling {len(silos) - len(missing)}/{len(silos)} silos"
                    if missing:
                        description += f", waiting for {', '.join(missing)}"
                progress.update(bar, completed=len(done_rounds), metric=metric, description=description)
                if self._finished(st, deadline):
                    return
                time.sleep(1.0)

    def _finished(self, st: Any, deadline: float) -> bool:
        """Whether the study is done; ResearcherError when it failed, a process died or time ran out."""
        if st.state == "done":
            return True
        if st.state == "failed":
            raise ResearcherError(f"study {st.study_id} failed: {st.error}")
        self._check_alive()
        if time.monotonic() > deadline:
            raise ResearcherError(f"study {st.study_id} did not finish within {self.opts.timeout_s:.0f} s")
        return False

    def _status(self, client: ResearcherClient, study_id: str) -> tuple[Any, dict[str, Any]]:
        """The study's status; a slow answer from a coordinator that is still running (a loaded
        machine) is asked again, for up to STATUS_PATIENCE_S, instead of ending the demo."""
        patience = time.monotonic() + STATUS_PATIENCE_S
        while True:
            try:
                return client.status(study_id)
            except ResearcherError as e:
                self._check_alive()
                if time.monotonic() > patience:
                    raise
                log.warning("study status not read (%s); asking again", e)
                time.sleep(2.0)

    def _collect_logs(self, out: Path, silos: list[str]) -> None:
        audit = out / "audit"
        audit.mkdir(exist_ok=True)
        copy_sqlite(out / "coordinator" / "audit.sqlite", audit / "coordinator.audit.sqlite")
        for s in silos:
            state = out / "silos" / s / "state"
            # Wait for the silo to exit so its log is complete and checkpointed.
            p = self.procs.get(s)
            if p is not None:
                try:
                    p.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    pass
            if (state / "audit.sqlite").exists():
                copy_sqlite(state / "audit.sqlite", audit / f"{s}.audit.sqlite")
            if (state / "privacy-ledger.sqlite").exists():
                copy_sqlite(state / "privacy-ledger.sqlite", audit / f"{s}.privacy-ledger.sqlite")

    def _stop_all(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.terminate()
        for p in self.procs.values():
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
