"""Regenerate the Python stubs of federation.proto: `python -m coordinator.api.codegen [OUT_DIR]`.

The stubs are committed so that installing fedcare needs no protoc; a test regenerates them
into a temporary folder and checks they equal the committed ones.
"""

from __future__ import annotations

import sys
from pathlib import Path

API_DIR = Path(__file__).resolve().parent
REPO_ROOT = API_DIR.parent.parent
PROTO = "coordinator/api/federation.proto"


def generate(out_root: Path = REPO_ROOT) -> list[Path]:
    """Write federation_pb2.py, federation_pb2.pyi and federation_pb2_grpc.py under out_root."""
    from grpc_tools import protoc  # dev dependency: only needed to regenerate

    out_root.mkdir(parents=True, exist_ok=True)
    args = [
        "protoc",
        f"-I{REPO_ROOT}",
        f"--python_out={out_root}",
        f"--pyi_out={out_root}",
        f"--grpc_python_out={out_root}",
        str(REPO_ROOT / PROTO),
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed on {PROTO}")
    base = out_root / "coordinator" / "api"
    return [base / n for n in ("federation_pb2.py", "federation_pb2.pyi", "federation_pb2_grpc.py")]


if __name__ == "__main__":
    for path in generate(Path(sys.argv[1]) if len(sys.argv) > 1 else REPO_ROOT):
        print(path)
