"""The device configuration (mpota.json) on the unix port: the CA file in any
form, and a device without an mpota server."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from helpers import unix_results
from mpota_host import devtls

BASE = {"ca": "ca.bin", "board": "esp32-generic-4mb", "trusted_keys": ["k.pem"]}
SERVER = {"server": "https://updates.example.com", "device_id": "dev1", "token": "t"}


@pytest.fixture(scope="module")
def cas(tmp_path_factory: pytest.TempPathFactory) -> tuple[devtls.DevTLS, devtls.DevTLS]:
    root = tmp_path_factory.mktemp("cas")
    return devtls.create(root / "a"), devtls.create(root / "b")


def load(directory: Path, config: dict[str, Any], ca: bytes) -> Any:
    """config.load() on the board: the loaded config's facts, or the ConfigError."""
    (directory / "mpota.json").write_text(json.dumps(config))
    (directory / "ca.bin").write_bytes(ca)
    (directory / "k.pem").write_text("-----BEGIN PUBLIC KEY-----\n-----END PUBLIC KEY-----\n")
    (out,) = unix_results(f"""
import os
os.chdir({str(directory)!r})
from mpota import config
from mpota.errors import ConfigError
try:
    cfg = config.load()
except ConfigError as e:
    result("ConfigError: " + str(e))
else:
    import binascii
    result({{"server": cfg["server"], "device_id": cfg["device_id"], "token": cfg["token"],
            "cas": [binascii.hexlify(c).decode() for c in cfg["cas"]]}})
""")
    return out


def test_ca_as_der_pem_or_bundle(tmp_path: Path, cas) -> None:
    a, b = cas
    der_a, der_b = a.ca_der.read_bytes(), b.ca_der.read_bytes()
    for data, want in ((der_a, [der_a]), (a.ca_pem.read_bytes(), [der_a]),
                       (a.ca_pem.read_bytes() + b.ca_pem.read_bytes(), [der_a, der_b]),
                       (der_a + der_b, [der_a, der_b])):
        out = load(tmp_path, BASE | SERVER, data)
        assert [bytes.fromhex(c) for c in out["cas"]] == want


@pytest.mark.parametrize(("data", "problem"), [
    (b"hello, this is not a certificate\n", "not a DER certificate at byte 0"),
    (b"-----BEGIN CERTIFICATE-----\nMIIB\n", "without its END line"),
    (b"", "no certificate in it"),
])
def test_a_ca_file_that_is_not_a_certificate_is_named(tmp_path: Path, data: bytes,
                                                      problem: str) -> None:
    out = load(tmp_path, BASE | SERVER, data)
    assert out.startswith("ConfigError: CA file ca.bin: "), out
    assert problem in out and "as PEM or DER" in out, out


def test_no_server_means_no_credentials(tmp_path: Path, cas) -> None:
    der = cas[0].ca_der.read_bytes()
    out = load(tmp_path, BASE, der)
    assert out["server"] is None and out["device_id"] is None and out["token"] is None
    assert len(out["cas"]) == 1


@pytest.mark.parametrize(("config", "problem"), [
    (BASE | {"device_id": "dev1"}, "device_id given but no 'server'"),
    (BASE | {"device_id": "dev1", "token": "t"}, "device_id and token given but no 'server'"),
    (BASE | {"server": "https://u.example.com", "token": "t"}, "'device_id' is missing"),
    (BASE | {"server": "https://u.example.com", "device_id": "d"}, "no device token"),
    (BASE | SERVER | {"server": "http://u.example.com"}, "must be an https:// URL"),
])
def test_server_and_its_credentials_go_together(tmp_path: Path, cas, config: dict[str, Any],
                                                problem: str) -> None:
    out = load(tmp_path, config, cas[0].ca_der.read_bytes())
    assert out.startswith("ConfigError: ") and problem in out, out


def test_a_der_ca_whose_last_byte_is_zero(tmp_path: Path) -> None:
    # A DER certificate ends with its signature's last byte, which is 0x00 for one
    # CA in 256: the whole certificate must still be read.
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "zero-ending CA")])
    now = dt.datetime.now(dt.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
               .public_key(key.public_key()).serial_number(1)
               .not_valid_before(now).not_valid_after(now + dt.timedelta(days=1)))
    der = b""
    while not der.endswith(b"\x00"):  # ECDSA signatures are random: a few hundred tries
        der = builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)
    out = load(tmp_path, BASE | SERVER, der)
    assert isinstance(out, dict), out
    assert [bytes.fromhex(c) for c in out["cas"]] == [der], out


@pytest.mark.parametrize("text", ["[]", '"IDLE"', '{"state": "SLEEPING"}', "{not json"])
def test_a_state_file_that_is_not_the_agents_starts_idle(tmp_path: Path, text: str) -> None:
    (tmp_path / "mpota_state.json").write_text(text)
    (out,) = unix_results(f"""
import os
os.chdir({str(tmp_path)!r})
from mpota.state import State
st = State()
result([st.name, st.get("last_result")["reason"], st.get("written", 0)])
""")
    assert out == ["IDLE", "state file mpota_state.json was corrupt", 0]


def test_wifi_must_name_its_network(tmp_path: Path, cas) -> None:
    out = load(tmp_path, BASE | SERVER | {"wifi": {"key": "k"}}, cas[0].ca_der.read_bytes())
    assert out.startswith("ConfigError: ") and "wifi must be" in out, out


def parsed(config: dict[str, Any]) -> Any:
    """config.parse() on the unix port: the network and watchdog fields, or the ConfigError."""
    (out,) = unix_results(f"""
import json
from mpota import config
from mpota.errors import ConfigError
try:
    cfg = config.parse(json.loads({json.dumps(config)!r}))
except ConfigError as e:
    result("ConfigError: " + str(e))
else:
    result({{k: cfg[k] for k in ("wifi", "network", "watchdog_after_confirm",
                                 "app_watchdog_ms")}})
""")
    return out


def test_network_and_watchdog_defaults() -> None:
    assert parsed(BASE | SERVER) == {"wifi": None, "network": "agent",
                                     "watchdog_after_confirm": "agent",
                                     "app_watchdog_ms": 300000}
    out = parsed(BASE | SERVER | {"wifi": {"ssid": "home"}, "watchdog_ms": 2000,
                                  "watchdog_after_confirm": "app"})
    assert out["wifi"] == {"ssid": "home", "key": None, "timeout_s": 15, "keep": False}
    assert out["watchdog_after_confirm"] == "app" and out["app_watchdog_ms"] == 20000
    out = parsed(BASE | SERVER | {"network": "app", "app_watchdog_ms": 5000,
                                  "wifi": {"ssid": "h", "key": "k", "timeout_s": 30,
                                           "keep": True}})
    assert out == {"wifi": {"ssid": "h", "key": "k", "timeout_s": 30, "keep": True},
                   "network": "app", "watchdog_after_confirm": "agent",
                   "app_watchdog_ms": 5000}


@pytest.mark.parametrize(("config", "problem"), [
    ({"network": "both"}, "network must be \"agent\" or \"app\", not 'both'"),
    ({"watchdog_after_confirm": "nobody"}, "watchdog_after_confirm must be \"agent\" or \"app\""),
    ({"app_watchdog_ms": 500}, "app_watchdog_ms 500 is too short (min 1000)"),
    ({"wifi": {"ssid": "h", "timeout_s": 0}}, "wifi.timeout_s must be 1 to 300 seconds"),
    ({"wifi": {"ssid": "h", "keep": "yes"}}, "wifi: 'keep' must be bool, got str"),
    ({"wifi": {"ssid": "h", "password": "k"}}, "wifi: unknown field(s) password"),
])
def test_network_and_watchdog_mistakes_are_named(config: dict[str, Any], problem: str) -> None:
    out = parsed(BASE | SERVER | config)
    assert out.startswith("ConfigError: mpota.json") and problem in out, out
