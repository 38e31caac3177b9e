"""`fedcare pki`: a study CA and the certificates of the coordinator, silos, researchers, auditors.

Each certificate names its holder in the subject CN and its role in the OU; the
coordinator binds every call to both. A hospital makes its own key and sends only a signing
request (`request` there, `sign_request` at the CA); `issue` makes key and certificate together
at the CA, for demos and tests. Revocation: `fedcare pki revoke` adds the serial to
a CRL signed by the CA, which the coordinator reads (and re-reads when it changes).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from compliance.keys import write_secret_file

ROLES = ("coordinator", "silo", "researcher", "auditor")
VALID_DAYS = 365


class PKIError(Exception):
    pass


def _write_private(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    """The key file readable by its owner only from the moment it exists (never world-readable, even briefly)."""
    write_secret_file(path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                              serialization.NoEncryption()))


def _load_ca(pki_dir: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    cert_path, key_path = pki_dir / "ca.pem", pki_dir / "ca.key"
    if not cert_path.exists() or not key_path.exists():
        raise PKIError(f"no study CA in {pki_dir}: run `fedcare pki init --dir {pki_dir}` first")
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise PKIError(f"{key_path} is not an EC private key")
    return x509.load_pem_x509_certificate(cert_path.read_bytes()), key


def init_ca(pki_dir: Path, *, name: str = "fedcare study CA") -> Path:
    pki_dir.mkdir(parents=True, exist_ok=True)
    if (pki_dir / "ca.pem").exists():
        raise PKIError(f"{pki_dir / 'ca.pem'} exists; refusing to replace a CA that certificates depend on")
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=VALID_DAYS * 5))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False, key_agreement=False,
                                         encipher_only=False, decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))
    _write_private(pki_dir / "ca.key", key)
    (pki_dir / "ca.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    write_crl(pki_dir, revoked=[])
    return pki_dir / "ca.pem"


def _check_holder(name: str, role: str) -> None:
    if role not in ROLES:
        raise PKIError(f"role must be one of {ROLES}, not {role!r}")
    if not name or "/" in name or name.startswith("."):
        raise PKIError(f"invalid name {name!r}: letters, digits, '.', '_' or '-', no '/', not starting with '.'")


def _subject(name: str, role: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name),
                      x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role)])


def _sign(pki_dir: Path, public_key: ec.EllipticCurvePublicKey, *, name: str, role: str,
          hosts: tuple[str, ...]) -> x509.Certificate:
    """The CA's certificate for `public_key`: `name` as CN and DNS name, `role` as OU; the coordinator's
    also names its hosts and is a TLS server, everyone else a TLS client."""
    ca_cert, ca_key = _load_ca(pki_dir)
    now = dt.datetime.now(dt.timezone.utc)
    sans: list[x509.GeneralName] = [x509.DNSName(name)]
    if role == "coordinator":
        for h in hosts:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(h)))
            except ValueError:
                sans.append(x509.DNSName(h))
    usage = ExtendedKeyUsageOID.SERVER_AUTH if role == "coordinator" else ExtendedKeyUsageOID.CLIENT_AUTH
    return (x509.CertificateBuilder().subject_name(_subject(name, role)).issuer_name(ca_cert.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=VALID_DAYS))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .sign(ca_key, hashes.SHA256()))


def issue(pki_dir: Path, *, name: str, role: str, hosts: tuple[str, ...] = ("localhost", "127.0.0.1")) -> tuple[Path, Path]:
    """Issue a certificate + key for `name` in `role` at the CA (tests, demos, the CA's own coordinator).
    A hospital's key should be made at the hospital instead: `request` there, `sign_request` here."""
    _check_holder(name, role)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _sign(pki_dir, key.public_key(), name=name, role=role, hosts=hosts)
    out = pki_dir / role
    out.mkdir(exist_ok=True)
    _write_private(out / f"{name}.key", key)
    (out / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return out / f"{name}.pem", out / f"{name}.key"


def request(out_dir: Path, *, name: str, role: str) -> tuple[Path, Path]:
    """At the holder (a hospital): a new private key, kept in `out_dir` (mode 600), and a certificate
    signing request (PKCS #10, RFC 2986) for the CA. Only the request leaves; the key never does."""
    _check_holder(name, role)
    out_dir.mkdir(parents=True, exist_ok=True)
    key_path, csr_path = out_dir / f"{name}.key", out_dir / f"{name}.csr"
    if key_path.exists():
        raise PKIError(f"{key_path} exists; refusing to replace a key a certificate may depend on "
                       "(move it away to start over)")
    key = ec.generate_private_key(ec.SECP256R1())
    csr = x509.CertificateSigningRequestBuilder().subject_name(_subject(name, role)).sign(key, hashes.SHA256())
    _write_private(key_path, key)
    csr_path.write_bytes(csr.public_bytes(serialization.Encoding.PEM))
    return csr_path, key_path


def sign_request(pki_dir: Path, csr_path: Path, *, name: str, role: str, out: Path,
                 hosts: tuple[str, ...] = ("localhost", "127.0.0.1")) -> Path:
    """At the CA: sign a holder's request as `name` in `role`, which the CA operator states (the
    request's own subject must agree: a request cannot choose its identity or role). Writes `out`."""
    _check_holder(name, role)
    try:
        csr = x509.load_pem_x509_csr(csr_path.read_bytes())
    except FileNotFoundError:
        raise PKIError(f"{csr_path}: file not found") from None
    except ValueError:
        raise PKIError(f"{csr_path} is not a PEM certificate signing request (make one with `fedcare pki request`)") from None
    if not csr.is_signature_valid:
        raise PKIError(f"{csr_path}: its signature does not match its key; the request was altered, ask for a new one")
    key = csr.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise PKIError(f"{csr_path}: the key is {type(key).__name__}; expected an EC (P-256) key from `fedcare pki request`")
    asked = {a.oid: a.value for a in csr.subject}
    cn, ou = asked.get(NameOID.COMMON_NAME), asked.get(NameOID.ORGANIZATIONAL_UNIT_NAME)
    if cn != name or ou not in (None, role):
        raise PKIError(f"{csr_path} asks for CN={cn}, OU={ou}; you are signing it as {name} ({role}): "
                       "check whom the request came from")
    cert = _sign(pki_dir, key, name=name, role=role, hosts=hosts)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return out


def write_crl(pki_dir: Path, *, revoked: list[int], number: int = 1) -> Path:
    """Sign and write the CRL: `number` (RFC 5280 §5.2.3) grows with each new one, so a coordinator
    can refuse an older CRL put back in its place; written atomically, never half a file."""
    ca_cert, ca_key = _load_ca(pki_dir)
    now = dt.datetime.now(dt.timezone.utc)
    builder = (x509.CertificateRevocationListBuilder().issuer_name(ca_cert.subject).last_update(now)
               .next_update(now + dt.timedelta(days=30))
               .add_extension(x509.CRLNumber(number), critical=False))
    for serial in revoked:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(now).build())
    crl = builder.sign(ca_key, hashes.SHA256())
    tmp = pki_dir / ".crl.pem.tmp"
    tmp.write_bytes(crl.public_bytes(serialization.Encoding.PEM))
    tmp.replace(pki_dir / "crl.pem")
    return pki_dir / "crl.pem"


def revoke(pki_dir: Path, cert_path: Path) -> Path:
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    crl_path = pki_dir / "crl.pem"
    old = x509.load_pem_x509_crl(crl_path.read_bytes()) if crl_path.exists() else None
    revoked = [r.serial_number for r in old] if old is not None else []
    try:
        number = old.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number + 1 if old is not None else 1
    except x509.ExtensionNotFound:
        number = 1
    return write_crl(pki_dir, revoked=sorted(set(revoked) | {cert.serial_number}), number=number)
