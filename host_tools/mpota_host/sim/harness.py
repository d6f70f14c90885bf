"""The simulated board as the host sees it: create, boot, stage, status, counters.

A board is one flash file laid out as on a real ESP32 (bootloader area left
erased, partition table at 0x8000, otadata, slots, NVS) plus a directory
``FLASH.sim/`` beside it with what a real board keeps elsewhere: its identity
(MAC), the device filesystem (``fs/``), NVS values, the flash op counters and
the facts of the current boot.

Power cuts can be armed by flash operation (erase/write; ``counters.bin``) or
by *durable operation*: every flash erase/write, every file commit, create,
rename or remove on the board's filesystem, every NVS set and commit, counted
by one counter (``durable.bin``; see device/sim/simpower.py, simfs.py and
simnvs.py for what each leaves behind).  ``cut_power_at(n, ops="durable")``
and ``trace_ops()`` let a test sweep every one of them.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import board as boards
from .. import resources
from ..appimage import check_app_image
from ..errors import SimulatorError
from ..partition_table import TABLE_OFFSET
from ..provisioning import HOOK_BOOT as AGENT_BOOT
from ..provisioning import HOOK_MAIN as AGENT_MAIN
from . import runner

SECTOR = 4096
COUNTERS_MAGIC = 0x4D504643
DURABLE_MAGIC = 0x4D50444F
NEVER = 0xFFFFFFFF
_HDR = 16
CUT_OPS = ("flash", "durable")
# durable.bin: magic, ops, cut_at, reserved, reads counted, read cut_at, read range
_DURABLE_FRESH = struct.pack("<8I", DURABLE_MAGIC, 0, NEVER, 0, 0, NEVER, 0, 0)


def __getattr__(name: str) -> tuple[str, ...]:
    """AGENT_MODULES: the agent's modules, for booting with them "frozen into
    the firmware" (found when asked, so importing this needs no agent)."""
    if name == "AGENT_MODULES":
        return resources.agent_modules()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# machine.reset_cause() values of the esp32 port
PWRON_RESET, HARD_RESET, WDT_RESET, DEEPSLEEP_RESET, SOFT_RESET = 1, 2, 3, 4, 5
CAUSE_NAMES = {1: "PWRON", 2: "HARD", 3: "WDT", 4: "DEEPSLEEP", 5: "SOFT"}

# How a boot ended -> (next reset cause, does the board go on booting)
ENDINGS: dict[str, tuple[int, bool]] = {
    "reset": (HARD_RESET, True),  # machine.reset(): esp_restart -> ESP_RST_SW
    "panic": (HARD_RESET, True),  # Guru Meditation -> ESP_RST_PANIC
    "wdt": (WDT_RESET, True),
    "soft-reset": (SOFT_RESET, True),
    "power-cut": (PWRON_RESET, True),
    "repl": (0, False),  # main.py finished: the board sits at the REPL
    "still-running": (0, False),  # program still running when the harness stopped watching
    "no-app": (0, False),  # bootloader found nothing to boot: it resets forever
}


@dataclass
class BootRecord:
    """One power-on of the board."""

    number: int
    reset_cause: int
    slot: str | None
    version: str | None
    behaviour: str | None
    ended: str
    output: str = field(repr=False)
    seconds: float = 0.0

    @property
    def kind(self) -> str:
        return self.ended.split(" ")[0]

    def line(self) -> str:
        if self.slot:
            fw = f"{self.slot} v{self.version} ({self.behaviour})"
        else:
            fw = "bootloader" if self.kind == "power-cut" else "no app"
        return (
            f"boot {self.number}: reset_cause={CAUSE_NAMES.get(self.reset_cause, '?')} "
            f"-> {fw} -> {self.ended} [{self.seconds:.1f}s]"
        )


@dataclass
class Counters:
    """Flash erases and writes since the board was created (or last cleared),
    and durable operations of every kind (flash, filesystem, NVS)."""

    total: int
    erases: list[int]
    writes: list[int]
    durable: int = 0

    def sector(self, addr: int) -> tuple[int, int]:
        i = addr // SECTOR
        return self.erases[i], self.writes[i]

    def in_range(self, addr: int, size: int) -> tuple[int, int]:
        first, last = addr // SECTOR, (addr + size - 1) // SECTOR
        return sum(self.erases[first : last + 1]), sum(self.writes[first : last + 1])


class SimBoard:
    """A simulated ESP32 board backed by one flash file."""

    def __init__(self, flash: Path) -> None:
        self.flash = Path(flash)
        self.sim_dir = Path(str(self.flash) + ".sim")
        if not self.flash.is_file() or not (self.sim_dir / "board.json").is_file():
            raise SimulatorError(
                f"no simulated board at {self.flash}; create one with "
                "'mpota sim new --board BOARD --firmware FW --flash FLASH'"
            )
        self.identity = json.loads((self.sim_dir / "board.json").read_text())

    @property
    def fs(self) -> Path:
        """The board's filesystem (MicroPython's '/'), kept as a host directory."""
        return self.sim_dir / "fs"

    @classmethod
    def create(
        cls, board_dir: str | Path, firmware: Path, flash: Path, mac: bytes | None = None
    ) -> SimBoard:
        """A new board: erased flash, partition table, firmware in ota_0 (or factory)."""
        board = boards.load(board_dir)
        slot0 = board.initial_app
        facts = check_app_image(Path(firmware), board.chip_id, slot0.size)
        flash = Path(flash)
        sim_dir = Path(str(flash) + ".sim")
        if flash.exists() or sim_dir.exists():
            raise SimulatorError(f"{flash} already exists; remove it or choose another path")
        flash.parent.mkdir(parents=True, exist_ok=True)
        tmp = flash.with_name(flash.name + ".tmp")
        with tmp.open("wb") as f:
            f.truncate(board.flash_size)
            f.seek(0)
            blank = b"\xff" * 0x10000
            for _ in range(board.flash_size // len(blank)):
                f.write(blank)
            f.seek(TABLE_OFFSET)
            f.write(board.table_binary())
            f.seek(slot0.offset)
            f.write(Path(firmware).read_bytes())
        (sim_dir / "fs").mkdir(parents=True)
        identity = {
            "board": board.name,
            "chip": board.chip,
            "chip_id": board.chip_id,
            "flash_size": board.flash_size,
            "mac": (mac or bytes([0x24, 0x0A, 0xC4]) + secrets.token_bytes(3)).hex(),
            "initial_firmware": facts.version,
        }
        (sim_dir / "board.json").write_text(json.dumps(identity, indent=2) + "\n")
        sectors = board.flash_size // SECTOR
        header = struct.pack("<IIII", COUNTERS_MAGIC, 0, NEVER, 0)
        (sim_dir / "counters.bin").write_bytes(header + bytes(8 * sectors))
        (sim_dir / "durable.bin").write_bytes(_DURABLE_FRESH)
        tmp.replace(flash)
        return cls(flash)

    # counters and power cuts

    def counters(self) -> Counters:
        raw = (self.sim_dir / "counters.bin").read_bytes()
        _, total, _, _ = struct.unpack_from("<IIII", raw)
        pairs = struct.unpack_from(f"<{(len(raw) - _HDR) // 4}I", raw, _HDR)
        return Counters(total, list(pairs[0::2]), list(pairs[1::2]), self._durable()[0])

    def _durable(self) -> tuple[int, int]:
        """(durable operations so far, armed cut) from durable.bin."""
        path = self.sim_dir / "durable.bin"
        if not path.exists():  # a board made before durable operations were counted
            path.write_bytes(_DURABLE_FRESH)
        _, total, cut, _ = struct.unpack("<IIII", path.read_bytes()[:16])
        return total, cut

    def clear_counters(self) -> None:
        raw = bytearray((self.sim_dir / "counters.bin").read_bytes())
        struct.pack_into("<II", raw, 4, 0, NEVER)
        raw[_HDR:] = bytes(len(raw) - _HDR)
        (self.sim_dir / "counters.bin").write_bytes(raw)
        (self.sim_dir / "durable.bin").write_bytes(_DURABLE_FRESH)
        if (self.sim_dir / "ops.log").exists():
            (self.sim_dir / "ops.log").write_text("")

    def _set_cut(self, name: str, absolute: int, offset: int = 8) -> None:
        self._durable()  # creates durable.bin on an old board
        with (self.sim_dir / name).open("r+b") as f:
            f.seek(offset)
            f.write(struct.pack("<I", absolute))

    def cut_power_at_read(self, n: int, addr: int, size: int) -> None:
        """Lose power during the n-th flash read (1-based, from now) that touches
        ``addr``..``addr + size``, e.g. inside a slot's read-back check.
        ``cut_power_at(None)`` disarms it."""
        if n < 1:
            raise SimulatorError(f"power cut index must be 1 or more, not {n}")
        self._durable()
        with (self.sim_dir / "durable.bin").open("r+b") as f:
            f.seek(16)
            f.write(struct.pack("<4I", 0, n, addr, addr + size))

    def cut_power_at(self, n: int | None, ops: str = "flash") -> None:
        """Lose power during the n-th operation from now (1-based): the n-th
        flash erase or write (``ops="flash"``), or the n-th durable operation
        of any kind (``ops="durable"``).  ``None`` disarms both."""
        if ops not in CUT_OPS:
            raise SimulatorError(f"power cut ops must be one of {', '.join(CUT_OPS)}, not {ops!r}")
        if n is None:
            self._set_cut("counters.bin", NEVER)
            self._set_cut("durable.bin", NEVER)
            self._set_cut("durable.bin", NEVER, offset=20)
            return
        if n < 1:
            raise SimulatorError(f"power cut index must be 1 or more, not {n}")
        if ops == "flash":
            self._set_cut("counters.bin", self.counters().total + n)
        else:
            self._set_cut("durable.bin", self._durable()[0] + n)

    def trace_ops(self, on: bool = True) -> None:
        """Record every durable operation from now on (see :meth:`ops`)."""
        path = self.sim_dir / "ops.log"
        if on:
            path.write_text("")
        else:
            path.unlink(missing_ok=True)

    def ops(self) -> list[str]:
        """The durable operations traced so far, as "N kind detail" lines
        (N counts from the last :meth:`clear_counters`)."""
        path = self.sim_dir / "ops.log"
        return path.read_text().splitlines() if path.exists() else []

    # running

    def run(
        self,
        script: str | Path,
        args: list[str] | None = None,
        env: dict[str, str] | None = None,
        heapsize: str = runner.DEFAULT_HEAP,
        timeout: float = 60.0,
        echo: Callable[[str], None] | None = None,
        frozen: tuple[str, ...] = (),
    ) -> runner.Run:
        """Run a MicroPython script on the board as the running firmware (no boot)."""
        return runner.run(self.flash, script, args, env, heapsize, timeout, echo, frozen=frozen)

    def boot(
        self,
        max_boots: int = 10,
        cut_at: int | None = None,
        timeout: float = 60.0,
        heapsize: str = runner.DEFAULT_HEAP,
        echo: Callable[[str], None] | None = None,
        on_boot: Callable[[BootRecord], None] | None = None,
        frozen: tuple[str, ...] = (),
        cut_ops: str = "flash",
    ) -> list[BootRecord]:
        """Power the board on and follow its resets until it settles or max_boots.

        Settled means: main.py returned to the REPL, the program was still
        running after ``timeout`` seconds, or no app could be booted.
        ``cut_at`` loses power during that flash operation of this call (that
        durable operation with ``cut_ops="durable"``); without it, a cut armed
        earlier with :meth:`cut_power_at` stays armed.
        """
        if cut_at is not None:
            self.cut_power_at(cut_at, cut_ops)
        try:
            return self._boot_loop(max_boots, timeout, heapsize, echo, on_boot, frozen)
        finally:
            if cut_at is not None:
                self.cut_power_at(None)

    def _boot_loop(
        self,
        max_boots: int,
        timeout: float,
        heapsize: str,
        echo: Callable[[str], None] | None,
        on_boot: Callable[[BootRecord], None] | None,
        frozen: tuple[str, ...],
    ) -> list[BootRecord]:
        records: list[BootRecord] = []
        cause, soft = PWRON_RESET, False
        for number in range(1, max_boots + 1):
            if not soft:
                (self.sim_dir / "wdt").unlink(missing_ok=True)  # a hard reset stops the WDT
                (self.sim_dir / "boot.json").unlink(missing_ok=True)  # the bootloader decides anew
            env = {"MPOTA_SIM_RESET_CAUSE": str(cause)}
            if soft:
                env["MPOTA_SIM_SOFT"] = "1"
            result = runner.run(
                self.flash, "simboot", env=env, heapsize=heapsize,
                timeout=timeout, echo=echo, frozen=frozen,
            )
            facts = self.boot_facts() if result.ended != "no-app" else {}
            fw = facts.get("firmware") or {}
            record = BootRecord(
                number, cause, facts.get("running"), fw.get("version"), fw.get("behaviour"),
                result.ended, result.output, result.seconds,
            )
            if result.ended == "no-app":
                record.slot = None
            records.append(record)
            if on_boot is not None:
                on_boot(record)
            ending = ENDINGS.get(record.kind)
            if ending is None:
                raise SimulatorError(
                    f"boot {number} ended unexpectedly ({result.ended}):\n{result.output[-2000:]}"
                )
            cause, goes_on = ending
            soft = record.kind == "soft-reset"
            if not goes_on:
                break
        return records

    def boot_facts(self) -> dict[str, Any]:
        path = self.sim_dir / "boot.json"
        if not path.exists():
            return {}
        result: dict[str, Any] = json.loads(path.read_text())
        return result

    def stage(self, firmware: Path, echo: Callable[[str], None] | None = None) -> runner.Run:
        """Write ``firmware`` into the next slot and set boot, as an update would."""
        firmware = Path(firmware).resolve()
        if not firmware.is_file():
            raise SimulatorError(f"no firmware file {firmware}")
        result = self.run("simstage", [str(firmware)], echo=echo)
        if result.ended != "exit:0":
            raise SimulatorError(
                f"staging {firmware.name} failed ({result.ended}):\n{result.output}"
            )
        return result

    def status(self) -> dict[str, Any]:
        """Slots and their firmware, both otadata entries, and the slot booted next."""
        result = self.run("simboot", ["--status"])
        for line in result.output.splitlines():
            if line.startswith("STATUS "):
                status: dict[str, Any] = json.loads(line[len("STATUS ") :])
                status["board"] = self.identity["board"]
                status["running"] = self.boot_facts().get("running")
                return status
        raise SimulatorError(f"could not read the board's status:\n{result.output}")

    def write_file(self, name: str, data: str | bytes) -> Path:
        """Put a file on the board's filesystem (as mpremote cp would)."""
        path = self.fs / name
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        if isinstance(data, str):
            tmp.write_text(data)
        else:
            tmp.write_bytes(data)
        os.replace(tmp, path)
        return path

    def exec(self, code: str, heapsize: str = runner.DEFAULT_HEAP) -> str:
        """Run MicroPython code on the board (as the running firmware); its output."""
        script = self.sim_dir / "exec.py"
        script.write_text(code)
        try:
            result = self.run(script, heapsize=heapsize)
        finally:
            script.unlink(missing_ok=True)  # it may hold a key
        if result.ended != "exit:0":
            raise SimulatorError(f"code on the board ended with {result.ended}:\n"
                                 f"{result.output[-1500:]}")
        return result.output

    def install_agent(self, config: dict[str, Any], files: dict[str, bytes],
                      boot_py: str = AGENT_BOOT, main_py: str = AGENT_MAIN) -> None:
        """Install the compiled mpota package in /lib, its config and files, and the
        boot.py / main.py hooks: what provisioning does to a real board."""
        lib = self.fs / "lib" / "mpota"
        if lib.exists():
            shutil.rmtree(lib)
        shutil.copytree(runner.compiled_agent() / "mpota", lib,
                        ignore=shutil.ignore_patterns("*.tmp"))
        for name, data in files.items():
            self.write_file(name, data)
        self.write_file("mpota.json", json.dumps(config, indent=2))
        self.write_file("boot.py", boot_py)
        self.write_file("main.py", main_py)
