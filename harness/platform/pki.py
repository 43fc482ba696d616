"""The platform's certificate authority: made at first start, kept in the data dir.

It signs the broker's server certificate and every device's client certificate. EC P-256
throughout: signing thousands of device certificates per minute must stay cheap.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from harness.errors import Refused

DEVICE_CERT_DAYS = 3650
SERVER_CERT_DAYS = 825


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 of the DER certificate, hex: how the registry names a device certificate."""
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def fingerprint_der(der: bytes) -> str:
    return hashlib.sha256(der).hexdigest()


@dataclass
class IssuedCert:
    pem: str
    fingerprint: str
    serial_number: str
    not_after: dt.datetime


class CertificateAuthority:
    """The CA key and certificate, loaded from (or created in) a directory."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.cert_path = self.directory / "ca.crt"
        self.key_path = self.directory / "ca.key"
        if not self.cert_path.exists():
            self._create()
        self.cert = x509.load_pem_x509_certificate(self.cert_path.read_bytes())
        key = serialization.load_pem_private_key(self.key_path.read_bytes(), password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        self.key = key
        self.cert_pem = self.cert_path.read_text()

    def _create(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fleetrig"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"fleetrig platform CA {os.urandom(4).hex()}"),
        ])
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(_now() - dt.timedelta(minutes=5))
            .not_valid_after(_now() + dt.timedelta(days=7300))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                    key_encipherment=False, data_encipherment=False, key_agreement=False,
                    encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        _write_private(self.key_path, _key_pem(key))
        self.cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))

    def server_certificate(self, directory: Path, hosts: list[str]) -> tuple[Path, Path]:
        """(cert path, key path) of the broker's TLS certificate, made or remade for `hosts`."""
        cert_path, key_path = directory / "server.crt", directory / "server.key"
        wanted = sorted(set(hosts))
        if cert_path.exists() and key_path.exists():
            cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
            if _san_hosts(cert) == wanted and cert.not_valid_after_utc > _now() + dt.timedelta(days=30) \
                    and cert.issuer == self.cert.subject:
                return cert_path, key_path
        key = ec.generate_private_key(ec.SECP256R1())
        names: list[x509.GeneralName] = []
        for host in wanted:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                names.append(x509.DNSName(host))
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, wanted[0])]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(_now() - dt.timedelta(minutes=5))
            .not_valid_after(_now() + dt.timedelta(days=SERVER_CERT_DAYS))
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        _write_private(key_path, _key_pem(key))
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return cert_path, key_path

    def sign_device_csr(self, csr_pem: str, serial: str) -> IssuedCert:
        """Check a device's CSR and sign it; refuse anything but a sound request for `serial`."""
        try:
            csr = x509.load_pem_x509_csr(csr_pem.encode())
        except ValueError as exc:
            raise Refused(f"CSR for {serial} is not a valid PEM certificate request: {exc}") from None
        try:
            if not csr.is_signature_valid:
                raise Refused(f"CSR for {serial} has an invalid signature")
        except InvalidSignature:
            raise Refused(f"CSR for {serial} has an invalid signature") from None
        cns = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        if len(cns) != 1 or cns[0].value != serial:
            got = cns[0].value if cns else "none"
            raise Refused(f"CSR common name {got!r} does not match the device serial {serial!r}")
        public_key = csr.public_key()
        if isinstance(public_key, ec.EllipticCurvePublicKey):
            if public_key.curve.key_size < 256:
                raise Refused(f"CSR for {serial}: EC key below 256 bits")
        elif isinstance(public_key, rsa.RSAPublicKey):
            if public_key.key_size < 2048:
                raise Refused(f"CSR for {serial}: RSA key below 2048 bits")
        else:
            raise Refused(f"CSR for {serial}: key type {type(public_key).__name__} not accepted")
        not_after = _now() + dt.timedelta(days=DEVICE_CERT_DAYS)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, serial)]))
            .issuer_name(self.cert.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(_now() - dt.timedelta(minutes=5))
            .not_valid_after(not_after)
            .add_extension(
                x509.SubjectAlternativeName([x509.UniformResourceIdentifier(f"urn:fleetrig:device:{serial}")]),
                critical=False,
            )
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        return IssuedCert(
            pem=cert.public_bytes(serialization.Encoding.PEM).decode(),
            fingerprint=fingerprint(cert),
            serial_number=format(cert.serial_number, "x"),
            not_after=not_after,
        )


def _san_hosts(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return sorted([*san.get_values_for_type(x509.DNSName),
                   *(str(ip) for ip in san.get_values_for_type(x509.IPAddress))])


def default_server_hosts() -> list[str]:
    return ["localhost", "127.0.0.1", "::1", socket.gethostname()]
