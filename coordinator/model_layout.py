"""The study's model as the coordinator sees it: version 0 of the shared parameters.

The coordinator builds the same architecture as the silos from the spec (pipelines.models)
so it can create version 0 and check every update against the exact expected layout. The
build runs once per study in a short-lived child process: importing torch and MONAI costs
about 400 MB of resident memory, which the long-running coordinator should not carry.

    python -m coordinator.model_layout < spec.json > version0.fct
"""

from __future__ import annotations

import subprocess
import sys

from coordinator.api.study import StudySpec
from coordinator.api.tensors import decode_tensors, encode_tensors
from coordinator.errors import InvalidInput


def build_initial_model(spec: StudySpec) -> bytes:
    """Version 0 (shared layers, initialised from the study seed) as encoded tensors."""
    proc = subprocess.run([sys.executable, "-m", "coordinator.model_layout"], input=spec.to_json().encode(),
                          capture_output=True, timeout=600)
    if proc.returncode != 0:
        detail = proc.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
        raise InvalidInput(f"model: the spec's architecture cannot be built: {detail[0]}")
    decode_tensors(proc.stdout)  # refuse a malformed result here, not at the first silo
    return proc.stdout


def _main() -> None:
    import torch

    from pipelines.models import build_model, get_shared_weights, shared_parameter_names

    spec = StudySpec.from_json(sys.stdin.buffer.read())
    with torch.device("meta"):  # count first, allocating nothing
        size = sum(p.numel() for p in build_model(**spec.model_arguments()).parameters())
    if size > spec.model.max_parameters:
        sys.exit(f"the model has {size:,} parameters, above model.max_parameters = {spec.model.max_parameters:,}; "
                 "choose smaller model dimensions")
    torch.manual_seed(spec.training.seed)
    model = build_model(**spec.model_arguments())
    personal = spec.model.personal_layers
    blob = encode_tensors(shared_parameter_names(model, personal), get_shared_weights(model, personal))
    sys.stdout.buffer.write(blob)


if __name__ == "__main__":
    _main()
