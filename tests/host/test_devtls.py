"""``mpota serve --dev --san``: the development certificate covers the names and
addresses a board on the LAN uses, checked with real TLS handshakes."""

from __future__ import annotations

import socket
import ssl
from pathlib import Path

import pytest
from cryptography import x509

from mpota_host import devtls
from mpota_host.errors import UsageError
from mpota_host.server.app import start_server


def _handshake(port: int, ca: Path, connect_to: str, server_name: str) -> None:
    """A verifying TLS handshake with the server at connect_to:port for server_name."""
    context = ssl.create_default_context(cafile=str(ca))
    with socket.create_connection((connect_to, port), timeout=10) as raw, \
            context.wrap_socket(raw, server_hostname=server_name):
        pass


def _can_use_127_0_0_2() -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.2", 0))
        except OSError:
            return False
    return True


def test_a_san_address_and_name_pass_certificate_checks_and_others_fail(tmp_path: Path) -> None:
    if not _can_use_127_0_0_2():
        pytest.skip("this system's loopback has no 127.0.0.2 (Linux has the whole 127/8)")
    releases = tmp_path / "releases"
    releases.mkdir()
    data = tmp_path / "data"
    tls, note = devtls.prepare(data / "tls", ("127.0.0.2", "Updates.Test"))
    assert note is not None and "created" in note
    assert devtls.covered(tls) == {"localhost", "127.0.0.1", "127.0.0.2", "updates.test"}
    with start_server(releases, data, host="0.0.0.0", port=0) as handle:
        assert handle.ca_der == tls.ca_der  # the server took the certificate made for the SANs
        _handshake(handle.port, tls.ca_pem, "127.0.0.2", "127.0.0.2")  # an IP SAN
        _handshake(handle.port, tls.ca_pem, "127.0.0.1", "updates.test")  # a DNS SAN
        _handshake(handle.port, tls.ca_pem, "127.0.0.1", "localhost")
        with pytest.raises(ssl.SSLCertVerificationError, match="match"):
            _handshake(handle.port, tls.ca_pem, "127.0.0.1", "other.test")
        with pytest.raises(ssl.SSLCertVerificationError, match="match"):
            _handshake(handle.port, tls.ca_pem, "127.0.0.2", "127.0.0.3")


def test_a_missing_san_re_makes_the_certificate_under_the_same_ca(tmp_path: Path) -> None:
    directory = tmp_path / "tls"
    tls = devtls.ensure(directory)
    ca_before = tls.ca_der.read_bytes()
    assert devtls.covered(tls) == {"localhost", "127.0.0.1"}
    tls, note = devtls.prepare(directory, ("192.168.1.20",))
    assert note is not None and "lacked 192.168.1.20" in note and "same CA" in note
    assert tls.ca_der.read_bytes() == ca_before  # provisioned boards keep working
    cert = x509.load_pem_x509_certificate(tls.cert.read_bytes())
    ca = x509.load_pem_x509_certificate(tls.ca_pem.read_bytes())
    cert.verify_directly_issued_by(ca)
    # asked again, nothing changes; asked for a new name, the old ones stay covered
    assert devtls.prepare(directory, ("192.168.1.20",))[1] is None
    tls, note = devtls.prepare(directory, ("updates.local",))
    assert devtls.covered(tls) == {"localhost", "127.0.0.1", "192.168.1.20", "updates.local"}


def test_unusable_sans_are_refused_in_one_line() -> None:
    with pytest.raises(UsageError, match="wildcard"):
        devtls.check_name("0.0.0.0")
    with pytest.raises(UsageError, match="neither an IP address nor a host name"):
        devtls.check_name("bad name!")
    assert devtls.check_name("Updates.Local.") == "updates.local"


def test_the_advice_names_the_server_url_the_ca_and_an_unreachable_listener(
        tmp_path: Path) -> None:
    tls, _ = devtls.prepare(tmp_path / "tls", ("192.168.1.20",))
    lines = devtls.serve_advice("127.0.0.1", 8443, tls, ("192.168.1.20",))
    assert f'"server": "https://192.168.1.20:8443", "ca": "{tls.ca_pem}"' in lines[0]
    assert "--host 0.0.0.0" in lines[1]
    lines = devtls.serve_advice("0.0.0.0", 8443, tls, ("192.168.1.20",))
    assert len(lines) == 1
    lines = devtls.serve_advice("192.168.1.30", 8443, tls, ())
    assert "does not cover 192.168.1.30" in lines[0] and "--san 192.168.1.30" in lines[0]


def test_no_lan_warning_for_a_loopback_san(tmp_path: Path) -> None:
    tls, _ = devtls.prepare(tmp_path / "tls", ("127.0.0.2",))
    assert len(devtls.serve_advice("127.0.0.1", 8443, tls, ("127.0.0.2",))) == 1


def test_the_serve_command_covers_san_and_says_what_to_provision(tmp_path: Path) -> None:
    """``mpota serve --dev --san`` as a user runs it: the advice names the
    address for the config, and a board connecting by that address passes."""
    import re
    import subprocess
    import sys

    if not _can_use_127_0_0_2():
        pytest.skip("this system's loopback has no 127.0.0.2 (Linux has the whole 127/8)")
    (tmp_path / "rel").mkdir()
    cmd = [sys.executable, "-m", "mpota_host.cli", "serve", "--releases", "rel", "--data",
           "data", "--dev", "--san", "127.0.0.2", "--host", "0.0.0.0", "--port", "0"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline() for _ in range(3)]
        advice = next((x for x in lines if '"server"' in x), "")
        found = re.search(r'"server": "https://127\.0\.0\.2:(\d+)", "ca": "([^"]+)"', advice)
        assert found, lines
        _handshake(int(found[1]), tmp_path / found[2], "127.0.0.2", "127.0.0.2")
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_san_without_dev_is_refused_in_one_line(tmp_path: Path) -> None:
    import subprocess
    import sys

    (tmp_path / "rel").mkdir()
    key = tmp_path / "k.pem"
    key.write_text("x")
    result = subprocess.run(
        [sys.executable, "-m", "mpota_host.cli", "serve", "--releases", "rel", "--data", "d",
         "--cert", "k.pem", "--key", "k.pem", "--san", "10.0.0.2"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result
    assert result.stderr.strip().count("\n") == 0 and "--san goes with --dev" in result.stderr
