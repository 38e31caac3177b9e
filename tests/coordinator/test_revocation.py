"""Revocation fails closed (#16 item 5): the CRL must exist, be the CA's, be current and never
go back; while it cannot be used every certificate is refused with the reason."""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from coordinator.auth import Authenticator
from coordinator.errors import PermissionDenied, StateError
from coordinator.revocation import RevocationError, RevocationList
from fedcare.pki import _load_ca, init_ca, issue, revoke


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    init_ca(tmp_path / "pki")
    return tmp_path / "pki"


def _ca(pki: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate((pki / "ca.pem").read_bytes())


def _serial(cert: Path) -> int:
    return x509.load_pem_x509_certificate(cert.read_bytes()).serial_number


def test_missing_crl_refuses_to_start(pki: Path, tmp_path: Path) -> None:
    with pytest.raises(StateError, match=r"cannot check revocation: CRL .*typo\.pem not found \(check --crl\)"):
        Authenticator(insecure=False, ca_cert=pki / "ca.pem", crl=pki / "typo.pem")


def test_garbage_crl_refuses_to_start_in_one_line(pki: Path) -> None:
    (pki / "crl.pem").write_bytes(b"-----BEGIN X509 CRL-----\nnot base64\n-----END X509 CRL-----\n")
    with pytest.raises(StateError, match="is not a readable PEM CRL") as info:
        Authenticator(insecure=False, ca_cert=pki / "ca.pem", crl=pki / "crl.pem")
    assert "\n" not in str(info.value)


def test_expired_crl_is_refused(pki: Path) -> None:
    ca_cert, ca_key = _load_ca(pki)
    then = dt.datetime.now(dt.UTC) - dt.timedelta(days=40)
    crl = (x509.CertificateRevocationListBuilder().issuer_name(ca_cert.subject).last_update(then)
           .next_update(then + dt.timedelta(days=30)).sign(ca_key, hashes.SHA256()))
    (pki / "crl.pem").write_bytes(crl.public_bytes(serialization.Encoding.PEM))
    with pytest.raises(RevocationError, match="expired at"):
        RevocationList(pki / "crl.pem", ca=_ca(pki))


def test_an_older_crl_put_back_is_refused_even_after_a_restart(pki: Path, tmp_path: Path) -> None:
    cert, _ = issue(pki, name="silo-x", role="silo")
    old = tmp_path / "old-crl.pem"
    shutil.copy(pki / "crl.pem", old)  # number 1: silo-x not revoked yet
    revoke(pki, cert)  # number 2
    state = tmp_path / "state"
    state.mkdir()
    crl = RevocationList(pki / "crl.pem", ca=_ca(pki), state_dir=state)
    assert _serial(cert) in crl.revoked_serials()
    shutil.copy(old, pki / "crl.pem")  # validly signed by the CA, only older
    with pytest.raises(RevocationError, match="CRL number 1, older than number 2"):
        crl.revoked_serials()
    with pytest.raises(RevocationError, match="older than number 2"):  # a restart remembers number 2
        RevocationList(pki / "crl.pem", ca=_ca(pki), state_dir=state)


def test_crl_broken_while_running_refuses_every_call_with_the_reason(pki: Path) -> None:
    cert, _ = issue(pki, name="silo-y", role="silo")
    auth = Authenticator(insecure=False, ca_cert=pki / "ca.pem", crl=pki / "crl.pem")
    assert _serial(cert) not in auth._revoked_serials()
    (pki / "crl.pem").write_text("garbage")
    for _ in range(2):
        with pytest.raises(PermissionDenied, match="revocation cannot be checked: CRL .* is not a readable PEM CRL"):
            auth._revoked_serials()
    (pki / "crl.pem").unlink()
    with pytest.raises(PermissionDenied, match="not found"):
        auth._revoked_serials()
    revoke(pki, cert)  # a valid, newer CRL: calls are checked again
    assert _serial(cert) in auth._revoked_serials()


def test_crl_of_another_ca_is_refused(pki: Path, tmp_path: Path) -> None:
    init_ca(tmp_path / "rogue")
    with pytest.raises(StateError, match="not signed by the study CA"):
        Authenticator(insecure=False, ca_cert=pki / "ca.pem", crl=tmp_path / "rogue" / "crl.pem")


def test_pki_numbers_each_crl(pki: Path) -> None:
    cert, _ = issue(pki, name="silo-z", role="silo")
    number = lambda: x509.load_pem_x509_crl((pki / "crl.pem").read_bytes()).extensions.get_extension_for_class(  # noqa: E731
        x509.CRLNumber).value.crl_number
    assert number() == 1
    revoke(pki, cert)
    assert number() == 2
