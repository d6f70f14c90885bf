"""Power cuts at every durable operation of a whole update: each flash erase and
write, each commit and rename of the agent's state file, each NVS write (the
security floor), and during the final read-back of the slot.  Wherever the power
goes, the board boots a verified image, and once power is back the update
completes: CONFIRMED on the new version, never rejected.

The image is not a multiple of 4096 bytes (its last block is partial, as almost
every real image's is) and the download window is 8 KiB, so the state file
records progress several times.  See device/sim/simpower.py for what a cut at
each kind of operation leaves behind.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import struct
from pathlib import Path
from typing import Any

import pytest

from fleet import Fleet
from mpota_host import keys
from mpota_host.sim.harness import BootRecord, SimBoard

# every test here runs with the blocking agent and with the asyncio one
pytestmark = pytest.mark.usefixtures("driver")

SLOT0, SLOT1, SLOT_SIZE = 0x10000, 0x190000, 0x180000
OTADATA = 0xD000
PLAIN_SIZE = 4 * 4096 + 1000  # five blocks, the last one partial: three progress saves
ENCRYPTED_SIZE = 2 * 4096 + 1000  # three blocks: one resume mid-ciphertext
CONFIG = {
    "wifi": {"ssid": "sim", "key": "sim-key"},
    "download": {"window": 8192, "backoff_ms": 20, "backoff_max_ms": 200, "stall_s": 5},
}
VERSIONS = {"ota_0": "1.0.0", "ota_1": "2.0.0"}


def copy_board(board: SimBoard, dest: Path) -> SimBoard:
    dest.mkdir()
    flash = dest / board.flash.name
    shutil.copyfile(board.flash, flash)
    shutil.copytree(board.sim_dir, Path(str(flash) + ".sim"))
    return SimBoard(flash)


def lines(records: list[BootRecord]) -> str:
    return "\n".join(r.line() for r in records)


def active_otadata_state(board: SimBoard) -> int:
    """State of the otadata entry the bootloader follows (highest valid seq)."""
    raw = board.flash.read_bytes()[OTADATA : OTADATA + 0x2000]
    entries = []
    for i in range(2):
        seq, _label, state, crc = struct.unpack_from("<I20sII", raw, i * 0x1000)
        if seq not in (0, 0xFFFFFFFF) and crc == _seq_crc(seq):
            entries.append((seq, state))
    return max(entries)[1] if entries else -1


def _seq_crc(seq: int) -> int:
    import zlib

    return zlib.crc32(struct.pack("<I", seq), 0xFFFFFFFF)


def nvs(board: SimBoard) -> dict[str, Any]:
    path = board.sim_dir / "nvs.json"
    data: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    ns: dict[str, Any] = data.get("mpota", {})
    return ns


class Update:
    """One release, one provisioned board, and what a complete update looks like."""

    def __init__(self, fleet: Fleet, tmp_path: Path, encrypted: bool, size: int) -> None:
        self.fleet = fleet
        self.tmp = tmp_path
        kw: dict[str, Any] = {"security_counter": 1}
        enc_key = None
        if encrypted:
            pair = keys.generate(fleet.root / "enc", name="encryption")
            kw["encrypt_for"] = [keys.load_public(pair.public)]
            enc_key = pair.private
        release = fleet.publish("2.0.0", 2, size=size, **kw)
        self.image = (fleet.root / f"fw-2.0.0-healthy-{size}.bin").read_bytes()
        assert len(self.image) % 4096, "the test needs an image with a partial last block"
        self.sha = json.loads((release / "manifest.json").read_text())["sha256"]
        self.template = fleet.device(config=CONFIG, enc_key=enc_key)
        self.old_slot = self.template.flash.read_bytes()[SLOT0 : SLOT0 + SLOT_SIZE]

    def probe(self) -> list[str]:
        """The durable operations of an update nothing interrupts."""
        board = copy_board(self.template, self.tmp / "probe")
        board.clear_counters()
        board.trace_ops()
        seen: list[str] = []
        records = self.boot(board, seen, 4)
        assert [(r.slot, r.version, r.kind) for r in records] == [
            ("ota_0", "1.0.0", "reset"), ("ota_1", "2.0.0", "repl")], \
            lines(records) + "\n" + records[-1].output
        assert seen + self.problems(board, records, records) == []
        return board.ops()

    def watch(self, board: SimBoard, seen: list[str]) -> Any:
        """An on_boot check: the slot that just ran held a verified image (the
        running slot cannot change while it runs, so looking afterwards is enough)."""
        def check(r: BootRecord) -> None:
            if r.slot is None:
                return
            addr = SLOT1 if r.slot == "ota_1" else SLOT0
            held = board.flash.read_bytes()[addr : addr + SLOT_SIZE]
            good = (hashlib.sha256(held[: len(self.image)]).hexdigest() == self.sha
                    if r.slot == "ota_1" else held == self.old_slot)
            if not good or VERSIONS.get(r.slot) != r.version:
                seen.append(f"booted an unverified image: {r.line()}")
        return check

    def boot(self, board: SimBoard, seen: list[str], max_boots: int) -> list[BootRecord]:
        return board.boot(max_boots=max_boots, timeout=20, on_boot=self.watch(board, seen))

    def problems(self, board: SimBoard, first: list[BootRecord],
                 after: list[BootRecord]) -> list[str]:
        """Everything wrong with a board once power came back (empty: all is well)."""
        out: list[str] = []
        last = after[-1]
        if (last.slot, last.version, last.kind) != ("ota_1", "2.0.0", "repl"):
            out.append(f"did not end on v2.0.0 at the REPL: {last.line()}")
        state = json.loads((board.fs / "mpota_state.json").read_text())
        result = state.get("last_result") or {}
        if state.get("state") != "IDLE" or result.get("state") != "CONFIRMED" or \
                result.get("version_code") != 2:
            out.append(f"agent state {state.get('state')}, last result {result}")
        if 2 in state.get("rejected", []):
            out.append(f"the good release was rejected: {state.get('rejected')}")
        if active_otadata_state(board) != 2:  # ESP_OTA_IMG_VALID
            out.append("the otadata entry the bootloader follows is not VALID")
        flash = board.flash.read_bytes()
        slot1 = flash[SLOT1 : SLOT1 + len(self.image)]
        if hashlib.sha256(slot1).hexdigest() != self.sha:
            out.append("ota_1 does not hold the release byte for byte")
        if flash[SLOT0 : SLOT0 + SLOT_SIZE] != self.old_slot:
            out.append("the running slot ota_0 was written")
        if nvs(board).get("sec_floor") != ["i32", 1]:
            out.append(f"security floor in NVS is {nvs(board).get('sec_floor')}, not 1")
        return out

    def cut(self, name: str, arm: Any, expect: str = "power-cut") -> list[str]:
        """Cut the power where arm(board) says, power on again until the board
        settles, then once more: what is wrong afterwards."""
        board = copy_board(self.template, self.tmp / name)
        board.clear_counters()
        arm(board)
        seen: list[str] = []
        try:
            first = self.boot(board, seen, 6)
        finally:
            board.cut_power_at(None)
        cuts = [r for r in first if r.kind == "power-cut"]
        if not cuts or not cuts[0].ended.startswith(expect):
            return [f"{name}: the power was not cut at {expect}:\n{lines(first)}"]
        after = first[-1:]
        if (first[-1].slot, first[-1].kind) != ("ota_1", "repl"):
            after = self.boot(board, seen, 4)  # power is back: the agent goes on
        found = seen + self.problems(board, first, after)
        if not found:
            shutil.rmtree(board.flash.parent)
            return []
        tail = (after[-1].output or first[-1].output)[-1500:]
        return [f"{name} [{cuts[0].ended}]: " + "; ".join(found) + "\n"
                + lines(first + after) + "\n" + tail]


@pytest.mark.parametrize(("encrypted", "size"), [(False, PLAIN_SIZE), (True, ENCRYPTED_SIZE)],
                         ids=["plain", "encrypted"])
def test_power_cut_at_every_durable_operation_of_an_update(fleet: Fleet, tmp_path: Path,
                                                           encrypted: bool, size: int) -> None:
    update = Update(fleet, tmp_path, encrypted, size)
    ops = update.probe()
    kinds = {line.split(" ")[1] for line in ops}
    assert {"erase", "write", "fs-open", "fs-write", "fs-close", "fs-rename", "nvs-set",
            "nvs-commit"} <= kinds, ops
    sweep = len(ops)
    if encrypted:
        # only the download differs from a plain release (CBC resumes): cut until
        # set_boot() writes otadata; what follows is the plain sweep's path
        slot_written = [i for i, line in enumerate(ops) if line.split(" ")[2].startswith("0x19")]
        sweep = next(i for i, line in enumerate(ops) if i > slot_written[0] and
                     line.split(" ")[2] in ("0xd000", "0xe000"))
    failures: list[str] = []
    for n in range(1, sweep + 1):
        failures += update.cut(f"cut at durable op {n}",
                               lambda b, n=n: b.cut_power_at(n, ops="durable"))
    # during the read-back check of the downloaded slot (its first reads)
    blocks = -(-len(update.image) // 4096)
    for k in range(1, blocks + 1):
        failures += update.cut(f"readback{k}",
                               lambda b, k=k: b.cut_power_at_read(k, SLOT1, SLOT_SIZE),
                               f"power-cut read 0x{SLOT1 + (k - 1) * 4096:x}")
    assert not failures, f"{len(failures)} of {sweep + blocks} cuts went wrong:\n\n" + \
        "\n\n".join(failures)
