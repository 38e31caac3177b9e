"""`fedcare console add-user`: a hashed account a console then accepts; a short password refused in one line."""

from __future__ import annotations

import os
import subprocess
import sys

from console.researcher import accounts_in


def _add_user(state_dir, password: str, role: str = "auditor") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fedcare", "console", "add-user", "carol", "--role", role,
                           "--state-dir", str(state_dir)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "FEDCARE_CONSOLE_PASSWORD": password})


def test_add_user_stores_a_scrypt_hash_the_console_accepts(tmp_path):
    done = _add_user(tmp_path, "a long enough password")
    assert done.returncode == 0, done.stderr
    store = accounts_in(tmp_path)
    assert "a long enough password" not in store.path.read_text()
    assert oct(store.path.stat().st_mode & 0o777) == "0o600"
    assert store.check("carol", "a long enough password").role == "auditor"
    assert store.check("carol", "a long enough passwore") is None


def test_a_short_password_or_unknown_role_is_refused_in_one_line(tmp_path):
    short = _add_user(tmp_path, "short")
    assert short.returncode == 2 and "use at least 12" in short.stderr and len(short.stderr.strip().splitlines()) == 1
    role = _add_user(tmp_path, "a long enough password", role="root")
    assert role.returncode == 2 and "use one of researcher, auditor, site-admin" in role.stderr
