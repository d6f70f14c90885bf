"""Every failure path of keygen, release, verify, inspect, flash, partition-table and
sim *: the documented exit code (1 refused/failed, 2 usage, 3 board unreachable),
exactly one line on stderr naming the problem, never a traceback. An --out under a
regular file stands for any unwritable place (it fails for root too)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from helpers import tool
from mpota_host import keys

FW = "fw.bin"  # a valid app image 2.0.0, made by the fixture
CASES: list[tuple[str, list[str], int, str]] = [
    # (id, argv, exit code, words in the one line)
    ("no-command", ["frobnicate"], 2, "No such command 'frobnicate'"),
    ("keygen-unwritable", ["keygen", "--out", "fw.bin/keys"], 1, "choose a writable --out"),
    ("keygen-exists", ["keygen", "--out", "k"], 1, "never overwrites a key"),
    ("keygen-passphrase-no-tty", ["keygen", "--out", "k2", "--passphrase"], 2,
     "needs a terminal"),
    ("release-missing-firmware", ["release", "nope.bin", "--version", "2.0.0", "--version-code",
                                  "2", "--board", "esp32-generic-4mb", "--key", "k/signing.pem",
                                  "--out", "r"], 2, "'nope.bin' does not exist"),
    ("release-missing-option", ["release", FW, "--version", "2.0.0"], 2,
     "Missing option '--version-code'"),
    ("release-public-key", ["release", FW, "--version", "2.0.0", "--version-code", "2",
                            "--board", "esp32-generic-4mb", "--key", "k/signing.pub.pem",
                            "--out", "r"], 1, "is a public key"),
    ("release-junk-key", ["release", FW, "--version", "2.0.0", "--version-code", "2",
                          "--board", "esp32-generic-4mb", "--key", "junk.bin", "--out", "r"],
     1, "not a PEM private key"),
    ("release-unknown-board", ["release", FW, "--version", "2.0.0", "--version-code", "2",
                               "--board", "esp32-foo", "--key", "k/signing.pem", "--out", "r"],
     1, "unknown board 'esp32-foo'"),
    ("release-bad-image", ["release", "junk.bin", "--version", "2.0.0", "--version-code", "2",
                           "--board", "esp32-generic-4mb", "--key", "k/signing.pem", "--out",
                           "r"], 1, "not an ESP32 app image"),
    ("release-unwritable-out", ["release", FW, "--version", "2.0.0", "--version-code", "2",
                                "--board", "esp32-generic-4mb", "--key", "k/signing.pem",
                                "--out", "fw.bin/sub/r"], 1, "choose a writable --out"),
    ("verify-missing", ["verify", "nope", "--pubkey", "k/signing.pub.pem"], 2,
     "'nope' does not exist"),
    ("verify-not-a-release", ["verify", "k", "--pubkey", "k/signing.pub.pem"], 1, "k"),
    ("verify-junk-pubkey", ["verify", "k", "--pubkey", "junk.bin"], 1,
     "is not a PEM public key"),
    ("inspect-missing", ["inspect", "nope.bin"], 2, "'nope.bin' does not exist"),
    ("inspect-junk", ["inspect", "junk.bin"], 1, "not an ESP32 app image"),
    ("flash-port-absent", ["flash", "--port", "/dev/mpota-no-such-port", "--board",
                           "esp32-generic-4mb", FW], 3,
     "no ESP32 bootloader answered on /dev/mpota-no-such-port"),
    ("flash-bad-image", ["flash", "--port", "/dev/mpota-no-such-port", "--board",
                         "esp32-generic-4mb", "junk.bin"], 1, "not an ESP32 firmware image"),
    ("flash-unknown-board", ["flash", "--port", "/dev/null", "--board", "esp32-foo", FW], 1,
     "unknown board 'esp32-foo'"),
    ("flash-no-port", ["flash", "--board", "esp32-generic-4mb", FW], 2,
     "Missing option '--port'"),
    ("flash-bad-baud", ["flash", "--port", "x", "--board", "esp32-generic-4mb", "--baud", "1",
                        FW], 2, "--baud"),
    ("partition-table-unknown-board", ["partition-table", "esp32-foo", "--out", "t.bin"], 1,
     "unknown board 'esp32-foo'"),
    ("partition-table-unwritable", ["partition-table", "esp32-generic-4mb", "--out",
                                    "fw.bin/t.bin"], 1, "choose a writable --out"),
    ("sim-firmware-bad-size", ["sim", "firmware", "--version", "1", "--size", "lots", "--out",
                               "x.bin"], 2, "is not a size"),
    ("sim-new-bad-image", ["sim", "new", "--board", "esp32-generic-4mb", "--firmware",
                           "junk.bin", "--flash", "b.flash"], 1, "not an ESP32 app image"),
    ("sim-new-unknown-board", ["sim", "new", "--board", "esp32-foo", "--firmware", FW,
                               "--flash", "b.flash"], 1, "unknown board 'esp32-foo'"),
    ("sim-status-not-a-board", ["sim", "status", "--flash", FW], 1, "no simulated board"),
    ("sim-boot-not-a-board", ["sim", "boot", "--flash", FW], 1, "no simulated board"),
    ("sim-stage-not-a-board", ["sim", "stage", "--flash", FW, "--firmware", FW], 1,
     "no simulated board"),
    ("sim-counters-not-a-board", ["sim", "counters", "--flash", FW], 1, "no simulated board"),
    ("sim-bootloader-not-a-board", ["sim", "bootloader", "--flash", FW], 1,
     "no simulated board"),
    ("sim-bootloader-nothing-flashed", ["sim", "bootloader", "--flash", "board.flash", "--once",
                                        "--timeout", "1"], 1, "nothing was flashed"),
]


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from mpota_host.firmware import write_image
    from mpota_host.sim.harness import SimBoard

    root = tmp_path_factory.mktemp("cli")
    write_image(root / FW, "2.0.0", "healthy", 64 * 1024)
    (root / "junk.bin").write_bytes(b"hello, world\n" * 100)
    keys.generate(root / "k")
    SimBoard.create("esp32-generic-4mb", root / FW, root / "board.flash")
    return root


@pytest.mark.parametrize("argv, code, words", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_failure_is_one_line_with_its_exit_code(
    work: Path, argv: list[str], code: int, words: str
) -> None:
    env = {k: v for k, v in os.environ.items() if k != keys.PASSPHRASE_ENV}
    proc = subprocess.run([tool("mpota"), *argv], capture_output=True, text=True, cwd=work,
                          env=env, stdin=subprocess.DEVNULL, timeout=120)
    assert proc.returncode == code, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert words in lines[0], lines[0]
    assert lines[0].startswith("mpota"), lines[0]


def test_every_command_of_this_cli_has_a_failure_case() -> None:
    from mpota_host.cli import cli, sim

    technician = {"status", "provision", "trigger", "push", "serve", "device", "reports"}
    covered = {c[1][0] for c in CASES} | {" ".join(c[1][:2]) for c in CASES}
    mine = {name for name in cli.commands if name not in technician | {"sim"}}
    mine |= {f"sim {name}" for name in sim.commands if name != "serial"}
    assert mine <= covered, mine - covered


def test_success_exits_0(work: Path) -> None:
    proc = subprocess.run([tool("mpota"), "inspect", FW], capture_output=True, text=True,
                          cwd=work)
    assert proc.returncode == 0 and proc.stderr == "" and "app_version" in proc.stdout
