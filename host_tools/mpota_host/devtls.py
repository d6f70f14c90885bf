"""A local certificate authority and server certificate for development and tests.

``mpota serve --dev`` uses it so that the demo and the tests run real TLS with
certificate verification on the device, exactly as in production, but with a
CA that exists only on this machine. Devices pin the CA certificate in DER.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .errors import UsageError


@dataclass(frozen=True)
class DevTLS:
    """Paths of a dev CA and a server certificate signed by it."""

    directory: Path

    @property
    def ca_pem(self) -> Path:
        return self.directory / "ca.pem"

    @property
    def ca_der(self) -> Path:
        return self.directory / "ca.der"

    @property
    def cert(self) -> Path:
        return self.directory / "server.pem"

    @property
    def key(self) -> Path:
        return self.directory / "server.key"

    def exists(self) -> bool:
        return all(p.exists() for p in (self.ca_pem, self.ca_der, self.cert, self.key))


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "mpota development"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write_private(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    data = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


DEFAULT_NAMES = ("localhost", "127.0.0.1")
_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")


def check_name(name: str) -> str:
    """``name`` as it goes into the certificate: an IP address (normalised) or
    a DNS name; refuses what a device could not connect to by it."""
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        address = None
    if address is not None:
        if address.is_unspecified:
            raise UsageError(f"--san {name}: that is the listening wildcard, not an address a "
                             "board connects to; give this machine's LAN address "
                             "(e.g. --san 192.168.1.20)")
        return str(address)
    text = name.strip().rstrip(".").lower()
    if not text or len(text) > 253 or not all(_LABEL.match(p) for p in text.split(".")):
        raise UsageError(f"--san {name!r} is neither an IP address nor a host name "
                         "(letters, digits and '-' in dot-separated labels)")
    return text


def _server_cert(ca: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey,
                 hostnames: tuple[str, ...], days: int
                 ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    now = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=5)
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = []
    for host in hostnames:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(hostnames[0])).issuer_name(ca.subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now).not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    return cert, key


def create(directory: Path, hostnames: tuple[str, ...] = DEFAULT_NAMES,
           ca_name: str = "mpota dev CA", days: int = 825) -> DevTLS:
    """Create (or replace) a CA and a server certificate for ``hostnames``."""
    directory.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=5)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name(ca_name)).issuer_name(_name(ca_name))
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now).not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    cert, key = _server_cert(ca, ca_key, hostnames, days)
    tls = DevTLS(directory)
    tls.ca_pem.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    tls.ca_der.write_bytes(ca.public_bytes(serialization.Encoding.DER))
    tls.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_private(tls.key, key)
    _write_private(directory / "ca.key", ca_key)
    return tls


def covered(tls: DevTLS) -> set[str]:
    """The names and addresses the server certificate is valid for (as check_name
    writes them); empty when it cannot be read."""
    try:
        cert = x509.load_pem_x509_certificate(tls.cert.read_bytes())
        if cert.not_valid_after_utc <= dt.datetime.now(dt.timezone.utc):
            return set()
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (OSError, ValueError, x509.ExtensionNotFound):
        return set()
    return ({str(ip) for ip in sans.get_values_for_type(x509.IPAddress)}
            | {name.lower() for name in sans.get_values_for_type(x509.DNSName)})


def prepare(directory: Path, names: tuple[str, ...] = ()) -> tuple[DevTLS, str | None]:
    """The dev TLS material in ``directory`` for localhost, 127.0.0.1 and ``names``.

    Returns it and what was done (None when the existing certificate already
    covers every name). A certificate that lacks a name is re-made, signed by
    the same CA when its key is there, so boards that pin the CA keep working.
    """
    wanted = tuple(dict.fromkeys((*DEFAULT_NAMES, *(check_name(n) for n in names))))
    tls = DevTLS(directory)
    if not tls.exists():
        return create(directory, wanted), f"created a development CA and certificate in {directory}"
    have = covered(tls)
    missing = [n for n in wanted if n not in have]
    if not missing:
        return tls, None
    # keep what the old certificate covered too: a second serve with fewer --san
    # must not break boards configured with a name given before
    hostnames = tuple(dict.fromkeys((*wanted, *sorted(have))))
    try:
        ca = x509.load_pem_x509_certificate(tls.ca_pem.read_bytes())
        ca_key = serialization.load_pem_private_key((directory / "ca.key").read_bytes(), None)
    except (OSError, ValueError, TypeError):
        ca_key = None
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        create(directory, hostnames)
        return tls, (f"re-made the development CA and certificate in {directory} for "
                     f"{', '.join(missing)} (the old CA key was unreadable): provision "
                     f"boards again with the new {tls.ca_pem}")
    cert, key = _server_cert(ca, ca_key, hostnames, 825)
    tls.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_private(tls.key, key)
    return tls, (f"re-made the server certificate in {directory}: it lacked "
                 f"{', '.join(missing)} (same CA: provisioned boards keep working)")


def ensure(directory: Path, names: tuple[str, ...] = ()) -> DevTLS:
    """The dev TLS material in ``directory``, created on first use (see prepare)."""
    return prepare(directory, names)[0]


_WILDCARDS = ("0.0.0.0", "::", "")
_LOOPBACK = ("127.0.0.1", "localhost", "::1")


def _is_loopback(name: str) -> bool:
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return name == "localhost"


def serve_advice(host: str, port: int, tls: DevTLS, names: tuple[str, ...]) -> list[str]:
    """What ``mpota serve --dev`` tells its user: the server URL for the
    devices' config, the CA file to provision, and a listening address that
    boards cannot reach."""
    given = [check_name(n) for n in names]
    have = covered(tls)
    listen = host.strip("[]")
    lines: list[str] = []
    if given:
        url_host = given[0]
    elif listen not in _WILDCARDS and listen not in _LOOPBACK:
        url_host = listen
    else:
        url_host = "localhost"
    try:
        listen_norm = check_name(listen) if listen not in _WILDCARDS else listen
    except UsageError:
        listen_norm = listen
    if listen not in _WILDCARDS and listen_norm not in have:
        lines.append(f"warning: the certificate does not cover {listen}: devices connecting to "
                     f"it will refuse the server; add --san {listen}")
    shown = f"[{url_host}]" if ":" in url_host else url_host
    lines.append(f"provisioning config (mpota provision --config): "
                 f"\"server\": \"https://{shown}:{port}\", \"ca\": \"{tls.ca_pem}\"")
    if listen in _LOOPBACK and not all(_is_loopback(n) for n in given):
        lines.append(f"warning: listening on {listen} only: a board on the LAN cannot connect; "
                     "add --host 0.0.0.0 (or this machine's LAN address)")
    return lines
