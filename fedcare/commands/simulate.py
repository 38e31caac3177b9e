"""`fedcare simulate`: a study on N simulated hospitals, locally or on a Ray cluster (fedcare.simulate)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.progress import Progress, TextColumn, TimeElapsedColumn

from fedcare.commands.common import UserError, VerboseOpt, console


def simulate(
    spec: Annotated[Path, typer.Argument(help="the study spec (TOML); see examples/")],
    silos: Annotated[int, typer.Option(min=1, help="number of simulated hospitals")] = 10,
    engine: Annotated[str, typer.Option(help="ray (hospitals in Ray actors) | local (in this process, in turn)")] = "ray",
    address: Annotated[Optional[str], typer.Option(help="an existing Ray cluster (ray.init address); default: a local Ray")] = None,
    cpus_per_silo: Annotated[float, typer.Option(min=0.01, help="Ray CPUs each hospital asks for")] = 1.0,
    gpus_per_silo: Annotated[float, typer.Option(min=0.0, help="Ray GPUs each hospital asks for")] = 0.0,
    out: Annotated[Path, typer.Option(help="results folder (replaced)")] = Path("fedcare-simulation"),
    seed: Annotated[int, typer.Option(help="seed of the synthetic hospitals, the partition and the pseudonym keys")] = 0,
    patients: Annotated[int, typer.Option(min=10, help="synthetic patients per hospital")] = 60,
    tables: Annotated[Optional[Path], typer.Option(help="a folder of tables (CSV/Parquet) to partition into the silos "
                                                        "instead of synthetic hospitals")] = None,
    fhir: Annotated[Optional[Path], typer.Option(help="a folder of FHIR exports (Bundles, NDJSON) to partition into the "
                                                      "silos by patient instead of synthetic hospitals")] = None,
    patient_column: Annotated[str, typer.Option(help="--tables: the patient column of every table")] = "patient_id",
    partition_by: Annotated[Optional[str], typer.Option(help="a column (--tables) or Patient element (--fhir, e.g. "
                                                              "managingOrganization.reference) naming each patient's hospital")] = None,
    dirichlet_alpha: Annotated[Optional[float], typer.Option(min=1e-6, help="non-IID Dirichlet split of --tables or --fhir with this α")] = None,
    dirichlet_column: Annotated[Optional[str], typer.Option(help="the column (--tables) or Patient element (--fhir, e.g. gender) "
                                                                 "whose classes the Dirichlet split shares out")] = None,
    epsilon_cap: Annotated[Optional[float], typer.Option(min=1e-9, help="each node's ε cap (default: the study's target ε)")] = None,
    timeout: Annotated[float, typer.Option(min=1.0, help="give up after this many seconds")] = 24 * 3600.0,
    verbose: VerboseOpt = False,
) -> None:
    """Rehearse a study on N simulated hospitals: the real coordinator and silo nodes, silos in Ray actors."""
    from coordinator.api.study import StudySpec
    from fedcare.simulate import Engine, SimulationError, SimulationOptions
    from fedcare.simulate import simulate as run_simulation

    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING)
    if engine not in tuple(Engine):
        raise UserError(f"--engine must be one of {', '.join(Engine)}, not {engine!r}")
    if tables is not None and fhir is not None:
        raise UserError("--tables and --fhir are two populations to partition; name one folder")
    if tables is None and fhir is None and (partition_by or dirichlet_alpha is not None or dirichlet_column):
        raise UserError("--partition-by, --dirichlet-alpha and --dirichlet-column partition --tables or --fhir; "
                        "name the folder")
    if partition_by and dirichlet_alpha is not None:
        raise UserError("--partition-by and --dirichlet-alpha are two ways to partition; choose one")
    if (dirichlet_alpha is None) != (dirichlet_column is None):
        raise UserError("a Dirichlet split needs both --dirichlet-alpha and --dirichlet-column")
    parsed = StudySpec.from_toml(spec)  # refused before any data is generated
    opts = SimulationOptions(out=out, engine=Engine(engine), address=address, cpus_per_silo=cpus_per_silo,
                             gpus_per_silo=gpus_per_silo, seed=seed, epsilon_cap=epsilon_cap,
                             timeout_s=timeout)
    data_root = out.resolve().with_name(out.name + "-data")  # kept beside the results folder, which is replaced
    try:
        population = _population(tables, fhir, data_root, silos=silos, patients=patients, seed=seed, patient_column=patient_column,
                                 partition_by=partition_by, dirichlet_alpha=dirichlet_alpha, dirichlet_column=dirichlet_column)
    except SimulationError as e:
        raise UserError(str(e)) from None
    try:
        with Progress(TextColumn("[bold]simulation[/] {task.description}"), TimeElapsedColumn(), console=console) as progress:
            bar = progress.add_task(f"{silos} hospitals, engine {engine}")
            summary = run_simulation(parsed, population, opts, on_turn=lambda state, rnd: progress.update(
                bar, description=f"{silos} hospitals, engine {engine}: {state}, round {rnd}"))
    except SimulationError as e:
        raise UserError(str(e)) from None
    final = summary.get("final") or {}
    Console().print(f"study {summary['study']}: {len(summary['rounds']) - 1} rounds, final AUROC "
                    f"{final.get('auroc') if final.get('auroc') is not None else float('nan'):.3f}; results in "
                    f"[bold]{out}[/]: summary.json, final_model.pt (+ .sha256); data in {data_root}")


def _population(tables: Optional[Path], fhir: Optional[Path], data_root: Path, *, silos: int, patients: int, seed: int,
                patient_column: str, partition_by: Optional[str], dirichlet_alpha: Optional[float],
                dirichlet_column: Optional[str]):  # noqa: ANN202
    """The simulated hospitals: --tables or --fhir cut into `silos`, or synthetic ones."""
    from fedcare.simulate_data import partition_tables, synthetic_silos

    if fhir is not None:
        from fedcare.simulate_fhir import partition_fhir

        with console.status(f"splitting {fhir} into {silos} hospitals by patient…"):
            return partition_fhir(fhir, data_root, silos=silos, seed=seed, by=partition_by,
                                  classes_element=dirichlet_column, alpha=dirichlet_alpha)
    if tables is not None:
        return partition_tables(tables, data_root, silos=silos, patient_column=patient_column, seed=seed,
                                by=partition_by, dirichlet_column=dirichlet_column, alpha=dirichlet_alpha)
    with console.status(f"generating {silos} synthetic hospitals ({patients} patients each)…"):
        return synthetic_silos(data_root, silos=silos, patients=patients, seed=seed)
