"""The workload of benchmarks/simulate.py in Flower's simulation engine (run by it, with Flower's Python).

Flower lives in its own environment (its Ray pin differs from fedcare's); that environment sees
fedcare's packages after its own (a .pth file naming the repository and fedcare's site-packages).
Each hospital's data is ingested and split once, as a fedcare silo does, and saved; each Flower
client loads its part and runs fedcare's own LocalTrainer (train_round / evaluate), so the local
work per round is the same; FedAvg aggregates. Prints one JSON object on its last line.

Usage: FLOWER_PYTHON benchmarks/flower_simulate.py --data DIR --spec SPEC.json --keys SILOS_DIR [--cpus-per-silo 1]
(SPEC.json: the study benchmarks/simulate.py ran; SILOS_DIR: its silos' state, whose pseudonym keys are reused.
fedcare's gRPC stubs are not imported here: Flower pins an older protobuf.)
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def prepare(data: Path, prep: Path, spec, keys: Path) -> list[Path]:  # noqa: ANN001 - StudySpec
    """Each hospital's (train, validation, test) as a fedcare silo makes them, saved for the clients."""
    import torch

    from pipelines.dataset import split_silo
    from pipelines.ingest import ingest_silo
    from pipelines.normalise import fit_on_training
    from pipelines.parallel import SEQUENTIAL

    c = spec.cohort
    out = []
    prep.mkdir(parents=True, exist_ok=True)
    for h in sorted(d for d in data.iterdir() if d.is_dir()):
        r = ingest_silo(fhir=[h / "fhir"], dicom=[h / "dicom"], wearables=[h / "wearables"], cohort=c,
                        pseudonym_key=(keys / h.name / "state" / "pseudonym.key").read_bytes(), workers=SEQUENTIAL)
        parts = split_silo(r.dataset, test_fraction=c.test_fraction, seed=spec.training.seed,
                           validation_fraction=c.validation_fraction, stratify=c.stratify_split,
                           by_column=c.split == "column")
        train, validation, test = fit_on_training(*parts, features=c.features)
        path = prep / f"{h.name}.pt"
        torch.save({"train": train, "validation": validation, "test": test}, path)
        out.append(path)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--spec", type=Path, required=True)
    ap.add_argument("--keys", type=Path, required=True)
    ap.add_argument("--cpus-per-silo", type=float, default=1.0)
    args = ap.parse_args()
    import flwr
    import numpy as np
    import torch
    from flwr.client import ClientApp, NumPyClient
    from flwr.common import ndarrays_to_parameters
    from flwr.server import ServerApp, ServerAppComponents, ServerConfig
    from flwr.server.strategy import FedAvg
    from flwr.simulation import run_simulation

    from coordinator.api.study import StudySpec
    from silo_node.trainer import LocalTrainer

    spec = StudySpec.from_json(args.spec.read_text())
    t0 = time.perf_counter()
    files = prepare(args.data, args.data.parent / f"flower-prep-{args.data.name}", spec, args.keys)
    setup = time.perf_counter() - t0

    class Silo(NumPyClient):
        def __init__(self, path: Path) -> None:
            torch.set_num_threads(max(1, int(args.cpus_per_silo)))
            d = torch.load(path, weights_only=False)
            self.trainer = LocalTrainer(spec, d["train"], d["test"], validation=d["validation"])

        def fit(self, parameters, config):  # noqa: ANN001, ANN201
            r = self.trainer.train_round(parameters, noise_multiplier=None, round_seed=int(config.get("round", 0)))
            return [p + d for p, d in zip(parameters, r.delta)], int(r.weight), {"train_loss": r.train_loss}

        def evaluate(self, parameters, config):  # noqa: ANN001, ANN201
            m = self.trainer.evaluate(parameters)
            return float(m["loss"]), len(self.trainer.test_set), {"auroc": float(m.get("auroc", float("nan")))}

    def client_fn(context):  # noqa: ANN001, ANN202
        return Silo(files[int(context.node_config["partition-id"])]).to_client()

    _, initial = LocalTrainer(spec, *[torch.load(files[0], weights_only=False)[k] for k in ("train", "test")]).initial_weights()
    opened: dict[int, float] = {}
    closed: dict[int, float] = {}

    class TimedFedAvg(FedAvg):
        """FedAvg, timing each round from its fit to its evaluation's aggregate (Ray's start is not a round)."""

        def configure_fit(self, server_round, parameters, client_manager):  # noqa: ANN001, ANN201
            opened[server_round] = time.perf_counter()
            return super().configure_fit(server_round, parameters, client_manager)

        def aggregate_evaluate(self, server_round, results, failures):  # noqa: ANN001, ANN201
            closed[server_round] = time.perf_counter()
            return super().aggregate_evaluate(server_round, results, failures)

    strategy = TimedFedAvg(fraction_fit=1.0, fraction_evaluate=1.0, min_fit_clients=len(files),
                           min_evaluate_clients=len(files), min_available_clients=len(files),
                           initial_parameters=ndarrays_to_parameters([np.asarray(w) for w in initial]),
                           on_fit_config_fn=lambda r: {"round": r})

    def server_fn(context):  # noqa: ANN001, ANN202
        return ServerAppComponents(strategy=strategy, config=ServerConfig(num_rounds=spec.training.rounds))

    started = time.perf_counter()
    run_simulation(server_app=ServerApp(server_fn=server_fn), client_app=ClientApp(client_fn=client_fn),
                   num_supernodes=len(files),
                   backend_config={"client_resources": {"num_cpus": args.cpus_per_silo, "num_gpus": 0.0}})
    rounds = [round(closed[r] - opened[r], 2) for r in sorted(opened) if r in closed]
    print(json.dumps({"engine": f"flower {flwr.__version__}", "silos": len(files), "prepare_s": round(setup, 1),
                      "start_s": round(opened.get(1, started) - started, 1),
                      "round_s": rounds, "mean_round_s": round(sum(rounds) / len(rounds), 2) if rounds else None,
                      "total_s": round(time.perf_counter() - started, 1),
                      "peak_rss_driver_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}))


if __name__ == "__main__":
    main()
