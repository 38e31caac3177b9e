"""The released model's hash is the hash of the file the researcher gets (issue #21)."""

import hashlib
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from coordinator.api.tensors import decode_tensors, encode_tensors
from fedcare.researcher import write_final_model


def test_final_model_sha256_is_the_files_and_sha256sum_accepts_it(tmp_path: Path) -> None:
    arrays = [np.arange(6, dtype=np.float32).reshape(2, 3), np.ones(4, dtype=np.float32)]
    wire = encode_tensors(["head.weight", "head.bias"], arrays)
    model = write_final_model(decode_tensors(wire), tmp_path)
    line = (tmp_path / "final_model.sha256").read_text()
    assert line == f"{hashlib.sha256(model.read_bytes()).hexdigest()}  final_model.pt\n"
    assert line.split()[0] != hashlib.sha256(bytes(wire)).hexdigest()  # not the wire blob's
    state = torch.load(model)
    assert state["head.weight"].tolist() == arrays[0].tolist()
    if shutil.which("sha256sum") is None:
        pytest.skip("no sha256sum here; the hash itself was checked above")
    subprocess.run(["sha256sum", "--check", "--quiet", "final_model.sha256"], cwd=tmp_path, check=True)
