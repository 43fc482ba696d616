"""Getting an OTA package onto the device safely: trust, download, signature, unpacking.

The order of the checks is the order of the seed's rules: the fetch URL must start with an
entry of trustedRepositories ("Source verification failed" otherwise); the download is bounded
in size and time; when a signature certificate was provisioned, the package must carry a valid
signature (RSA over 3000 bits, SHA-256/384/512) or it is refused; archives are unpacked only if
every member stays inside the target folder and is a plain file or folder.
"""

from __future__ import annotations

import base64
import binascii
import shutil
import ssl
import tarfile
import urllib.error
import urllib.request
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from agent.hardware import HardwareError
from agent.wire import MAX_PACKAGE_BYTES, ResultCode

MIN_RSA_BITS = 3000
HASHES = {"256": hashes.SHA256, "384": hashes.SHA384, "512": hashes.SHA512}


_CONTEXTS: dict[str | None, ssl.SSLContext] = {}


def _context(ca_pem: str | None) -> ssl.SSLContext:
    """One TLS context per CA for every download: building one reads the system CA store."""
    context = _CONTEXTS.get(ca_pem)
    if context is None:
        context = ssl.create_default_context()
        if ca_pem:
            context.load_verify_locations(cadata=ca_pem)
        _CONTEXTS[ca_pem] = context
    return context


def check_trusted(url: str, trusted: list[str]) -> None:
    """Refuse a fetch URL that does not start with a trusted repository entry."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise HardwareError(ResultCode.INSTALL_FAILURE, f"Source verification failed: {url!r} is not an http(s) URL")
    if not any(entry and url.startswith(entry) for entry in trusted):
        raise HardwareError(ResultCode.INSTALL_FAILURE,
                            f"Source verification failed: {url} is not in trustedRepositories")


def download(url: str, target_dir: Path, *, ca_pem: str | None = None, username: str | None = None,
             password: str | None = None, timeout: float = 60.0, max_bytes: int = MAX_PACKAGE_BYTES) -> Path:
    """Fetch `url` into `target_dir` (blocking; run it in a thread). 404 when it is not there."""
    name = PurePosixPath(urlsplit(url).path).name
    if not name or name in (".", ".."):
        raise HardwareError(ResultCode.INSTALL_FAILURE, f"fetch URL {url} names no file")
    context = _context(ca_pem)
    request = urllib.request.Request(url, headers={"User-Agent": "fleetrig-agent"})
    if username:
        token = base64.b64encode(f"{username}:{password or ''}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    target_dir.mkdir(parents=True, exist_ok=True)
    path = target_dir / name
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=context) as response, path.open("wb") as out:
            total = 0
            while chunk := response.read(256 * 1024):
                total += len(chunk)
                if total > max_bytes:
                    raise HardwareError(ResultCode.INSTALL_FAILURE, f"package {name} is larger than {max_bytes} bytes")
                out.write(chunk)
    except urllib.error.HTTPError as exc:
        path.unlink(missing_ok=True)
        if exc.code == 404:
            raise HardwareError(ResultCode.FILE_NOT_FOUND, f"FILE NOT FOUND: {url}") from None
        if exc.code in (401, 403):
            raise HardwareError(
                400, f"the repository refused the download ({exc.code}): check username/password"
            ) from None
        raise HardwareError(ResultCode.INSTALL_FAILURE, f"download of {url} failed: HTTP {exc.code}") from None
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        path.unlink(missing_ok=True)
        reason = getattr(exc, "reason", exc)
        missing = isinstance(reason, FileNotFoundError)
        raise HardwareError(ResultCode.FILE_NOT_FOUND if missing else ResultCode.INSTALL_FAILURE,
                            f"download of {url} failed: {reason}") from None
    return path


def verify_signature(path: Path, signature_hex: str | None, cert_pem: str | None, sigversion: str = "384") -> None:
    """Check `path` against a hex RSA-PSS signature made with the provisioned certificate's key.

    With no certificate provisioned there is nothing to check against and any package passes,
    as on an INBM device; with one, a missing or bad signature refuses the package.
    """
    if not cert_pem:
        return
    if not signature_hex:
        raise HardwareError(ResultCode.INSTALL_FAILURE, "signature missing: this device checks package signatures")
    algorithm = HASHES.get(str(sigversion).strip() or "384")
    if algorithm is None:
        raise HardwareError(ResultCode.INSTALL_FAILURE, f"unknown signature hash SHA-{sigversion}; use 256, 384 or 512")
    try:
        signature = binascii.unhexlify(signature_hex.strip())
    except (binascii.Error, ValueError):
        raise HardwareError(ResultCode.INSTALL_FAILURE, "signature is not hexadecimal") from None
    key = x509.load_pem_x509_certificate(cert_pem.encode()).public_key()
    if not isinstance(key, rsa.RSAPublicKey) or key.key_size <= MIN_RSA_BITS:
        raise HardwareError(ResultCode.INSTALL_FAILURE,
                            f"signature certificate must hold an RSA key over {MIN_RSA_BITS} bits")
    data = path.read_bytes()
    try:
        key.verify(signature, data, padding.PSS(mgf=padding.MGF1(algorithm()), salt_length=padding.PSS.MAX_LENGTH),
                   algorithm())
    except InvalidSignature:
        raise HardwareError(ResultCode.INSTALL_FAILURE, f"signature check failed for {path.name}") from None


def sign(data: bytes, private_key: rsa.RSAPrivateKey, sigversion: str = "384") -> str:
    """The signature `verify_signature` accepts, as hex (what `fleetrig sign` prints)."""
    algorithm = HASHES[sigversion]
    return private_key.sign(
        data, padding.PSS(mgf=padding.MGF1(algorithm()), salt_length=padding.PSS.MAX_LENGTH), algorithm()
    ).hex()


def safe_extract(archive: Path, target: Path) -> list[str]:
    """Unpack a tar archive, refusing absolute paths, `..`, links and device files."""
    try:
        with tarfile.open(archive) as tar:
            members = tar.getmembers()
            for member in members:
                name = PurePosixPath(member.name)
                if name.is_absolute() or ".." in name.parts:
                    raise HardwareError(ResultCode.INSTALL_FAILURE,
                                        f"package {archive.name}: member {member.name!r} escapes the folder")
                if not (member.isfile() or member.isdir()):
                    raise HardwareError(ResultCode.INSTALL_FAILURE,
                                        f"package {archive.name}: member {member.name!r} is a link or device")
            if target.exists():
                shutil.rmtree(target)
            target.mkdir(parents=True)
            # The checks above refuse what the "data" filter refuses (Python 3.11.4+). Debian 12's
            # python3 (3.11.2) has no extraction filters, and refuses the keyword.
            safety = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            tar.extractall(target, members=members, **safety)  # type: ignore[arg-type]
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise HardwareError(ResultCode.INSTALL_FAILURE,
                            f"package {archive.name} is not a valid tar archive: {exc}") from None
    return sorted(m.name for m in members)
