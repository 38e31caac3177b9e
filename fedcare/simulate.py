"""`fedcare simulate`: rehearse a study on N simulated hospitals before asking real ones.

A simulation is a federation with the process layout changed and nothing else: the real
coordinator (`coordinator.server.Coordinator`: the Federation state machine, its store, the
rules, the summary) listens on loopback in this process; every simulated hospital is a real
`silo_node.node.SiloNode` (ingestion, approval, trainer, DP, compression, CKKS, audit log,
privacy ledger) talking gRPC to it. Only the silos' pacing differs: instead of long-polling in
a process of their own, the nodes are stepped turn by turn (`SiloNode.step`) by hosts, either
in this process one after the other (`engine = local`) or in Ray actors (`engine = ray`, as
Flower's simulation engine runs its clients on Ray). Each Ray host asks for the CPUs and GPUs
of one silo, and there are as many hosts as the cluster has room for: the silos beyond its
capacity take their turns in waves, in the same round. The study's results are the
federation's own: `summary.json` and `final_model.pt` from the coordinator, as `fedcare demo`
writes them.

Nothing of a simulation outlives it for anyone to account for, so its coordinator and nodes
write without waiting for the disk (`Durability.PROCESS_CRASH`, compliance/durability.py: no
fsync per audit entry, ledger row, coordinator row or blob), which a real node never does.

Reproducible: a simulated hospital's pseudonym key follows from the seed and its name
(`simulated_pseudonym_key`), so the same seed and data give the same splits and, in the
clear, the same model, bit for bit, as the same hospitals in a real federation.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from collections.abc import Callable, Sequence
from enum import StrEnum
from pathlib import Path
from typing import Any

import grpc
from pydantic import BaseModel, ConfigDict, Field

from compliance.durability import Durability
from compliance.keys import write_secret_file
from coordinator.api import federation_pb2 as pb
from coordinator.api.study import StudySpec
from coordinator.server import Coordinator, CoordinatorConfig
from fedcare.researcher import ResearcherClient, ResearcherError
from pipelines.parallel import Workers
from silo_node.client import CoordinatorClient
from silo_node.config import ApprovalConfig, BudgetConfig, DataConfig, NodeConfig
from silo_node.node import SiloNode
from silo_node.pseudonym_key import KEY_FILE

log = logging.getLogger(__name__)
# A stepped node's long-poll: the simulator, not the node, decides when it is its turn. Every node of a host
# that has no work waits this long in each turn, so a thousand of them 1 s a turn (10 ms: 10 s).
POLL_S = 0.001
IDLE_PAUSE_S = 0.05  # a turn in which no hospital had work: wait this long before the next
DURABILITY = Durability.PROCESS_CRASH  # of the simulation's coordinator and nodes (module docstring)


class Engine(StrEnum):
    LOCAL = "local"  # the hospitals in this process, one after the other
    RAY = "ray"  # the hospitals in Ray actors, as many at once as the cluster has room for


class SimulationError(Exception):
    """A simulation that cannot run or did not finish; the message says what to change."""


class SimulationOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    out: Path
    engine: Engine = Engine.RAY
    address: str | None = None  # an existing Ray cluster (ray.init(address=...)); None: a local Ray
    cpus_per_silo: float = Field(default=1.0, gt=0)
    gpus_per_silo: float = Field(default=0.0, ge=0)
    local_cpus: int | None = Field(default=None, ge=1)  # a local Ray's CPUs (None: all of this machine's)
    seed: int = 0  # of the simulated hospitals' pseudonym keys (and the synthetic data)
    epsilon_cap: float | None = Field(default=None, gt=0)  # each node's ε cap; None: the study's target ε, else 10
    timeout_s: float = Field(default=24 * 3600.0, gt=0)


class SimulatedSilo(BaseModel):
    """One simulated hospital: its name and the data its node reads."""

    model_config = ConfigDict(extra="forbid")

    name: str
    data: DataConfig


def simulated_pseudonym_key(seed: int, silo: str) -> bytes:
    """A simulated hospital's pseudonym key, from the seed and its name (a real node draws 32 random bytes)."""
    return hashlib.sha256(f"fedcare-simulate:{seed}:{silo}".encode()).digest()


def simulation_spec(spec: StudySpec, silos: int) -> StudySpec:
    """The study as simulated: every simulated hospital is expected (training.expected_silos = N)
    and the quorum is at most N; nothing else changes."""
    t = spec.training
    training = t.model_copy(update={"expected_silos": silos, "min_silos": min(t.min_silos, silos)})
    return StudySpec.model_validate({**spec.model_dump(), "training": training.model_dump()})


def node_config(silo: SimulatedSilo, *, root: Path, coordinator: str, spec: StudySpec, opts: SimulationOptions) -> NodeConfig:
    """The node config of a simulated hospital: auto-approval of the study, the node's ε cap, its own state."""
    cap = opts.epsilon_cap or spec.privacy.target_epsilon or BudgetConfig().epsilon_cap
    # A hospital parses its inputs on its own CPUs, not on every core of the machine it shares.
    data = silo.data.model_copy(update={"workers": Workers(processes=max(1, int(opts.cpus_per_silo)))})
    return NodeConfig(name=silo.name, coordinator=coordinator, state_dir=root / silo.name / "state", insecure=True,
                      data=data, poll_wait_s=POLL_S, max_retries=3,
                      privacy=BudgetConfig(epsilon_cap=cap, delta=spec.privacy.delta),
                      approval=ApprovalConfig(mode="auto", require_dp=False))


class SiloHost:
    """Simulated hospitals hosted in one process: each a real SiloNode over gRPC, stepped in turn."""

    def __init__(self, configs: Sequence[NodeConfig], *, seed: int, torch_threads: int | None = None) -> None:
        if torch_threads is not None:
            import torch

            torch.set_num_threads(max(1, torch_threads))
        self.nodes: list[SiloNode] = []
        channels: dict[str, grpc.Channel] = {}
        for config in configs:
            key = Path(config.state_dir) / KEY_FILE
            write_secret_file(key, simulated_pseudonym_key(seed, config.name), replace=True)
            channel = channels.setdefault(config.coordinator, grpc.insecure_channel(config.coordinator))
            node = SiloNode(config, CoordinatorClient(channel, silo=config.name, max_retries=config.max_retries,
                                                      max_retry_s=60.0), durability=DURABILITY)
            node.start()
            self.nodes.append(node)

    def turn(self) -> int:
        """Every hosted node takes one turn; the number that had work (a task other than WAIT)."""
        busy = 0
        for node in self.nodes:
            task = node.step()
            busy += task is not None and task.kind != pb.TASK_WAIT
        return busy


def _start_ray(opts: SimulationOptions) -> Any:
    """Ray, joined at `opts.address` or started locally (unless this process already runs it)."""
    try:
        import ray
    except ImportError:
        raise SimulationError("--engine ray needs Ray (pip install 'ray>=2.60'); or run with --engine local") from None
    if not ray.is_initialized():
        if opts.address:
            try:
                ray.init(address=opts.address, log_to_driver=False)
            except ConnectionError as e:
                raise SimulationError(_cluster_refused(opts.address, e)) from None
        else:
            ray.init(num_cpus=opts.local_cpus, include_dashboard=False, log_to_driver=False)
    return ray


def _cluster_refused(address: str, error: ConnectionError) -> str:
    """One line for a Ray cluster this driver could not join. A cluster started by `ray start` where a token
    exists (~/.ray/auth_token, written by any local Ray) asks for it, and Ray sends it to an explicit address
    only with RAY_AUTH_MODE=token (docs.ray.io: ray-security/token-auth)."""
    if "InvalidAuthToken" in str(error.__cause__ or ""):
        return (f"the Ray cluster at --address {address} asks for an authentication token: run with "
                "RAY_AUTH_MODE=token and the cluster's token (in ~/.ray/auth_token or RAY_AUTH_TOKEN)")
    return (f"no Ray cluster answered at --address {address}: give the head node's host:port (as `ray start "
            "--head` prints it) and check that the cluster is up")


def _ray_hosts(ray: Any, configs: list[NodeConfig], opts: SimulationOptions) -> tuple[Callable[[], int], Callable[[], None]]:
    """Ray actors hosting the nodes, as many as the cluster has room for (CPUs and GPUs per silo):
    (one turn of every node, release the actors)."""
    resources = ray.cluster_resources()
    room = int(resources.get("CPU", 0) // opts.cpus_per_silo)
    if opts.gpus_per_silo:
        room = min(room, int(resources.get("GPU", 0) // opts.gpus_per_silo))
    if room < 1:
        raise SimulationError(f"the Ray cluster has {resources.get('CPU', 0):g} CPUs and {resources.get('GPU', 0):g} "
                              f"GPUs, too few for one silo ({opts.cpus_per_silo:g} CPUs, {opts.gpus_per_silo:g} GPUs); "
                              "lower --cpus-per-silo / --gpus-per-silo")
    n_hosts = min(room, len(configs))
    log.info("Ray: %d hosts for %d silos (%d turns each per round)", n_hosts, len(configs), -(-len(configs) // n_hosts))
    remote = ray.remote(num_cpus=opts.cpus_per_silo, num_gpus=opts.gpus_per_silo)(SiloHost)
    threads = max(1, int(opts.cpus_per_silo))
    hosts = [remote.remote(configs[i::n_hosts], seed=opts.seed, torch_threads=threads) for i in range(n_hosts)]

    def release() -> None:
        for h in hosts:
            ray.kill(h)

    return (lambda: sum(ray.get([h.turn.remote() for h in hosts]))), release


def simulate(spec: StudySpec, silos: Sequence[SimulatedSilo], opts: SimulationOptions,
             on_turn: Callable[[str, int], None] | None = None) -> dict[str, Any]:
    """Run `spec` on `silos` (see the module docstring); write OUT/summary.json and OUT/final_model.pt; the summary.

    `on_turn(state, round)` is called after every turn (progress for a CLI)."""
    if not silos:
        raise SimulationError("no silos to simulate")
    spec = simulation_spec(spec, len(silos))
    out = opts.out.resolve()
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    ray = _start_ray(opts) if opts.engine is Engine.RAY else None
    # A Ray cluster's hosts reach the coordinator at this machine's address; a local one on loopback.
    host = ray.util.get_node_ip_address() if ray is not None and opts.address else "127.0.0.1"
    release: Callable[[], None] | None = None
    coordinator = Coordinator(CoordinatorConfig(state_dir=out / "coordinator", listen=f"{host}:0", insecure=True),
                              durability=DURABILITY).start()
    target = f"{host}:{coordinator.port}"
    try:
        configs = [node_config(s, root=out / "silos", coordinator=target, spec=spec, opts=opts) for s in silos]
        client = ResearcherClient(grpc.insecure_channel(target), target=target)
        if ray is not None:
            turn, release = _ray_hosts(ray, configs, opts)
        else:
            local = SiloHost(configs, seed=opts.seed, torch_threads=max(1, int(opts.cpus_per_silo)))
            turn = local.turn
        study_id = client.submit(spec)
        deadline = time.monotonic() + opts.timeout_s
        fed = coordinator.federation
        while (row := fed.study(study_id)).state not in ("done", "failed"):
            if time.monotonic() > deadline:
                raise SimulationError(f"study {study_id} did not finish within {opts.timeout_s:.0f} s (state "
                                      f"{row.state}, round {row.current_round}); allow more (--timeout) or simulate fewer silos")
            if turn() == 0:
                time.sleep(IDLE_PAUSE_S)
            if on_turn is not None:
                on_turn(row.state, row.current_round)
        if row.state == "failed":
            raise SimulationError(f"study {study_id} failed: {row.error}")
        client.results(study_id, out)
    except ResearcherError as e:
        raise SimulationError(str(e)) from None
    finally:
        coordinator.stop()
        if release is not None:
            release()
    return json.loads((out / "summary.json").read_text())
