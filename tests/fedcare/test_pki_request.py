"""Certificates for hospitals without moving a private key: the key and a signing request are made at
the hospital, the CA signs the request, only public files travel (issue #21, docs/deploy.md)."""

import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedcare.pki import PKIError, init_ca, request, sign_request


def _fedcare(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fedcare", *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_the_hospitals_key_stays_and_the_signed_certificate_is_for_it(tmp_path: Path) -> None:
    hospital, ca = tmp_path / "hospital", tmp_path / "ca"
    proc = _fedcare("pki", "request", "--silo", "st-mary", "--out", str(hospital), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (hospital / "st-mary.key").stat().st_mode & 0o777 == 0o600
    init_ca(ca)
    proc = _fedcare("pki", "sign", str(hospital / "st-mary.csr"), "--dir", str(ca), "--silo", "st-mary", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert not (ca / "silo" / "st-mary.key").exists()  # the CA never had the key
    cert = x509.load_pem_x509_certificate((ca / "silo" / "st-mary.pem").read_bytes())
    key = serialization.load_pem_private_key((hospital / "st-mary.key").read_bytes(), password=None)
    assert cert.public_key() == key.public_key()
    ca_cert = x509.load_pem_x509_certificate((ca / "ca.pem").read_bytes())
    cert.verify_directly_issued_by(ca_cert)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "st-mary"
    assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)[0].value == "silo"
    usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.CLIENT_AUTH]


def test_a_request_cannot_choose_another_identity_or_role(tmp_path: Path) -> None:
    init_ca(tmp_path / "ca")
    csr, _ = request(tmp_path / "h", name="st-mary", role="silo")
    with pytest.raises(PKIError, match="asks for CN=st-mary, OU=silo; you are signing it as st-luke"):
        sign_request(tmp_path / "ca", csr, name="st-luke", role="silo", out=tmp_path / "x.pem")
    with pytest.raises(PKIError, match="signing it as st-mary \\(researcher\\)"):
        sign_request(tmp_path / "ca", csr, name="st-mary", role="researcher", out=tmp_path / "x.pem")
    assert not (tmp_path / "x.pem").exists()


def test_an_altered_request_is_refused(tmp_path: Path) -> None:
    init_ca(tmp_path / "ca")
    csr, _ = request(tmp_path / "h", name="st-mary", role="silo")
    der = bytearray(x509.load_pem_x509_csr(csr.read_bytes()).public_bytes(serialization.Encoding.DER))
    der[-1] ^= 0x01  # the last byte of the ECDSA signature's s: still a request, no longer signed by its key
    csr.write_bytes(_pem(bytes(der)))
    with pytest.raises(PKIError, match="signature does not match its key"):
        sign_request(tmp_path / "ca", csr, name="st-mary", role="silo", out=tmp_path / "x.pem")


def _pem(der: bytes) -> bytes:
    import base64
    import textwrap

    body = "\n".join(textwrap.wrap(base64.b64encode(der).decode(), 64))
    return f"-----BEGIN CERTIFICATE REQUEST-----\n{body}\n-----END CERTIFICATE REQUEST-----\n".encode()


def test_request_refuses_to_replace_a_key(tmp_path: Path) -> None:
    request(tmp_path, name="st-mary", role="silo")
    proc = _fedcare("pki", "request", "--silo", "st-mary", "--out", str(tmp_path), cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.startswith("error:") and "refusing to replace" in proc.stderr


def test_a_planted_symlink_does_not_receive_the_private_key(tmp_path: Path) -> None:
    """Keys go through the one secret-file writer: created 0600 and moved into place, so a link an
    attacker planted where the key will be is replaced, not followed (the key never lands elsewhere)."""
    out, elsewhere = tmp_path / "hospital", tmp_path / "public" / "stolen.key"
    out.mkdir()
    elsewhere.parent.mkdir()
    (out / "st-mary.key").symlink_to(elsewhere)  # dangling: the key file "does not exist" yet
    request(out, name="st-mary", role="silo")
    assert not elsewhere.exists()
    key_file = out / "st-mary.key"
    assert not key_file.is_symlink() and key_file.stat().st_mode & 0o777 == 0o600
    assert b"PRIVATE KEY" in key_file.read_bytes()
