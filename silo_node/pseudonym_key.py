"""The silo's pseudonym secret: the key of `pipelines.deid` that makes an MRN the same pseudonym in every modality.

Kept in `<state_dir>/pseudonym.key`; read by the node's ingestion and by the stream receivers, which
must give a streamed patient the pseudonym the EHR gives them (and start without importing torch).
"""

from __future__ import annotations

import secrets
from pathlib import Path

from compliance.keys import write_secret_file

KEY_FILE = "pseudonym.key"


def load_or_create_key(path: Path) -> bytes:
    """The silo-local pseudonym secret (32 random bytes, mode 0600), created on first use."""
    if not path.exists():
        write_secret_file(path, secrets.token_bytes(32), replace=False)  # 0600 from creation, atomic
    return path.read_bytes()
