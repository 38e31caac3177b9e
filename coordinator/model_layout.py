"""The study's model as the coordinator sees it: version 0 of the shared parameters.

The coordinator builds the same architecture as the silos from the spec (pipelines.models)
so it can create version 0 and check every update against the exact expected layout. The
build runs in a short-lived child process: importing torch and MONAI costs about 400 MB of
resident memory, which the long-running coordinator should not carry, and about 6 s.

That import is most of a submission's time, and version 0 is a pure function of the model
arguments, the seed, the model code and the torch version. So builds are kept: in memory (a
few, bounded), and on disk when `FEDCARE_MODEL_CACHE` names a folder (operators resubmitting
studies; the test suite shares one across its coordinators). The disk cache is as trusted
as the coordinator's state folder: keep it on the same account with the same permissions.

    python -m coordinator.model_layout < spec.json > version0.fct
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import os
import subprocess
import sys
import tempfile
import threading
from collections import OrderedDict
from functools import cache
from pathlib import Path

from coordinator.api.study import StudySpec
from coordinator.api.tensors import TensorFormatError, decode_tensors, encode_tensors
from coordinator.errors import InvalidInput

log = logging.getLogger(__name__)

CACHE_ENV = "FEDCARE_MODEL_CACHE"
MEMORY_ENTRIES = 8
MEMORY_MAX_BYTES = 64 << 20  # a larger version 0 is rebuilt each time rather than held
_memory: OrderedDict[str, bytes] = OrderedDict()
_memory_lock = threading.Lock()


def build_initial_model(spec: StudySpec) -> bytes:
    """Version 0 (shared layers, initialised from the study seed) as encoded tensors."""
    key = _cache_key(spec)
    blob = _recall(key)
    if blob is None:
        blob = _build(spec)
        _keep(key, blob)
    return blob


def _build(spec: StudySpec) -> bytes:
    proc = subprocess.run([sys.executable, "-m", "coordinator.model_layout"], input=spec.to_json().encode(),
                          capture_output=True, timeout=600)
    if proc.returncode != 0:
        detail = proc.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
        raise InvalidInput(f"model: the spec's architecture cannot be built: {detail[0]}")
    decode_tensors(proc.stdout)  # refuse a malformed result here, not at the first silo
    return proc.stdout


def _cache_key(spec: StudySpec) -> str:
    """Everything version 0 depends on: the arguments, seed and limit, the model code, torch."""
    inputs = {"model": spec.model_arguments(), "seed": spec.training.seed,
              "personal": spec.model.personal_layers, "max_parameters": spec.model.max_parameters,
              "code": _model_code_sha256(), "torch": importlib.metadata.version("torch")}
    return hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()


@cache
def _model_code_sha256() -> str:
    """The source of pipelines.models, read without importing it (and so torch)."""
    import importlib.util

    spec = importlib.util.find_spec("pipelines.models")
    assert spec is not None and spec.submodule_search_locations, "pipelines.models is not installed"
    folder = Path(next(iter(spec.submodule_search_locations)))
    digest = hashlib.sha256()
    for path in sorted(folder.glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def _recall(key: str) -> bytes | None:
    with _memory_lock:
        if key in _memory:
            _memory.move_to_end(key)
            return _memory[key]
    folder = _disk_folder()
    if folder is None:
        return None
    try:
        blob = (folder / f"{key}.fct").read_bytes()
        decode_tensors(blob)
    except FileNotFoundError:
        return None
    except (OSError, TensorFormatError) as e:  # unreadable or damaged: rebuilt and rewritten
        log.warning("model cache: ignoring %s (%s)", folder / f"{key}.fct", e)
        return None
    _remember(key, blob)
    return blob


def _keep(key: str, blob: bytes) -> None:
    _remember(key, blob)
    folder = _disk_folder()
    if folder is None:
        return
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".building-", delete=False) as tmp:
            tmp.write(blob)
        os.replace(tmp.name, folder / f"{key}.fct")  # atomic: a reader sees all of it or nothing
    except OSError as e:  # a cache that cannot be written only costs time
        log.warning("model cache: cannot write to %s (%s)", folder, e)


def _remember(key: str, blob: bytes) -> None:
    if len(blob) > MEMORY_MAX_BYTES:
        return
    with _memory_lock:
        _memory[key] = blob
        _memory.move_to_end(key)
        while len(_memory) > MEMORY_ENTRIES:
            _memory.popitem(last=False)


def _disk_folder() -> Path | None:
    value = os.environ.get(CACHE_ENV, "").strip()
    return Path(value) if value else None


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
