"""Recovery after a reset at the end of a download, and a rollback that only
goes to an image the device verified: real HTTPS, simulated boards."""

from __future__ import annotations

import json
from typing import Any

import pytest

from fleet import Fleet
from mpota_host import devtls, keys
from mpota_host.firmware import write_image
from mpota_host.sim.harness import SimBoard
from netfaults import StaticHTTPS
from test_agent import SLOT1, WIFI, agent_state, device_id, otadata_states, story

# every test here runs with the blocking agent and with the asyncio one
pytestmark = pytest.mark.usefixtures("driver")

# An image size that is not a multiple of 4096, as almost every real image
SIZE = 70_000
# main.py: with the file "cut" present, the power goes during the final read-back
# (after the last progress save; the end is saved by STAGED after the read-back), as on a board
CUT_IN_READBACK = """import os
import mpota

if 'cut' in os.listdir():
    os.remove('cut')
    from mpota import slot
    def check(self, *args):
        print('CUT during the read-back, %d of %d bytes saved' % (self.offset, self.total))
        import machine
        machine.reset()
    slot.SlotWriter.check = check
mpota.probation()
print('RESULT', mpota.poll())
"""


def image_of(fleet: Fleet, version: str, size: int) -> bytes:
    return (fleet.root / f"fw-{version}-healthy-{size}.bin").read_bytes()


def write_state(board: SimBoard, **changes: Any) -> None:
    data = agent_state(board)
    data.update(changes)
    board.write_file("mpota_state.json", json.dumps(data))


@pytest.fixture
def enc(fleet: Fleet) -> keys.KeyPair:
    return keys.generate(fleet.root / "enc", name="encryption")


@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "encrypted"])
@pytest.mark.parametrize("resume_at", ["total", "odd", "beyond"])
def test_reset_after_the_last_save_completes_the_update(fleet: Fleet, enc: keys.KeyPair,
                                                        encrypted: bool, resume_at: str) -> None:
    kw: dict[str, Any] = {"encrypt_for": [keys.load_public(enc.public)]} if encrypted else {}
    rel = fleet.publish("2.0.0", 2, size=SIZE, **kw)
    image = image_of(fleet, "2.0.0", SIZE)
    total = (rel / "payload").stat().st_size
    assert len(image) % 4096 and total % 4096
    board = fleet.device(config=WIFI | {"health": {"server": False}}, main_py=CUT_IN_READBACK,
                         enc_key=enc.private if encrypted else None)
    board.write_file("cut", "1")
    records = board.boot(max_boots=1)
    assert story(records) == [("ota_0", "1.0.0", "reset")], records[0].output
    assert f"CUT during the read-back, {total} of {total} bytes saved" in records[0].output
    state = agent_state(board)
    assert state["state"] == "DOWNLOADING" and state["written"] < total, state
    # "total" is what the cut leaves; the others are what a state file may hold
    written = {"total": total, "odd": total - 5000, "beyond": total + 4096}[resume_at]
    write_state(board, written=written)
    board.clear_counters()
    records = board.boot(max_boots=3)
    assert story(records) == [("ota_0", "1.0.0", "reset"), ("ota_1", "2.0.0", "repl")], \
        records[0].output
    state = agent_state(board)
    assert state["last_result"]["state"] == "CONFIRMED", state
    assert 2 not in state.get("rejected", [])
    assert board.flash.read_bytes()[SLOT1 : SLOT1 + len(image)] == image
    assert otadata_states(board) == ["VALID", "VALID"]
    # resumed at the last whole block: the blocks before it were not written again
    kept = 0 if resume_at == "beyond" else written // 4096 * 4096
    assert board.counters().in_range(SLOT1, kept)[0] == 0
    if kept:
        assert board.counters().in_range(SLOT1 + kept, 4096)[0] == 1


def test_failed_hash_makes_the_slot_unbootable(fleet: Fleet) -> None:
    rel = fleet.publish("2.0.0", 2, size=SIZE, name="evil")
    # another valid app image of the same size: ESP-IDF's own image check passes it
    evil = fleet.root / "evil.bin"
    write_image(evil, "6.6.6", "healthy", SIZE)
    (rel / "payload").write_bytes(evil.read_bytes())
    tls = devtls.DevTLS(fleet.data / "tls")
    with StaticHTTPS(fleet.releases, tls.cert, tls.key) as static:
        main = ("import mpota\nmpota.probation()\n"
                f"print('RESULT', mpota.update('https://localhost:{static.port}/evil/'))\n"
                "print('ROLLBACK', mpota.rollback())\n")
        board = fleet.device(config=WIFI, main_py=main)
        records = board.boot(max_boots=2)
    out = records[0].output
    assert story(records) == [("ota_0", "1.0.0", "repl")], out
    assert "does not match the manifest" in out, out
    assert "ota_1 holds no image this device verified" in out, out
    assert "FAILED" in fleet.states(device_id(board))
    assert otadata_states(board) == ["VALID", "UNDEFINED"]
    assert board.status()["boot_slot"] == "ota_0"
    # the slot's first block is erased: no bootloader will take what is left
    assert board.flash.read_bytes()[SLOT1 : SLOT1 + 4096] == b"\xff" * 4096


def test_rollback_after_a_confirmed_update_and_back(fleet: Fleet) -> None:
    fleet.publish("2.0.0", 2)
    board = fleet.device(config=WIFI | {"health": {"server": False}})
    records = board.boot(max_boots=3)
    assert story(records)[-1] == ("ota_1", "2.0.0", "repl"), records[-1].output
    # the flashed image in ota_0 was never touched by a download: rollback may go there
    board.write_file("main.py", "import mpota\nmpota.probation()\n"
                                "import os\n"
                                "if 'back' in os.listdir():\n"
                                "    os.remove('back')\n"
                                "    print('ROLLBACK', mpota.rollback())\n")
    board.write_file("back", "1")
    records = board.boot(max_boots=3)
    assert story(records) == [("ota_1", "2.0.0", "reset"), ("ota_0", "1.0.0", "repl")], \
        records[0].output
    assert "rebooting into ota_0 (v1.0.0)" in records[0].output
    assert agent_state(board)["last_result"]["state"] == "CONFIRMED"
    # and forward again to the confirmed v2
    board.write_file("back", "1")
    records = board.boot(max_boots=3)
    assert story(records) == [("ota_0", "1.0.0", "reset"), ("ota_1", "2.0.0", "repl")], \
        records[0].output
    assert "rebooting into ota_1 (v2.0.0)" in records[0].output


def test_rollback_refuses_an_image_below_the_security_floor(fleet: Fleet) -> None:
    fleet.publish("2.0.0", 2, security_counter=3)
    board = fleet.device(config=WIFI | {"health": {"server": False}})
    assert story(board.boot(max_boots=3))[-1] == ("ota_1", "2.0.0", "repl")
    board.write_file("main.py", "import mpota\nprint('ROLLBACK', mpota.rollback())\n")
    records = board.boot(max_boots=2)
    assert story(records) == [("ota_1", "2.0.0", "repl")], records[0].output
    assert "security counter 0, below this device's floor 3" in records[0].output
    assert board.status()["boot_slot"] == "ota_1"


def test_update_from_a_manifest_url(fleet: Fleet) -> None:
    rel = fleet.publish("2.0.0", 2, size=SIZE, name="cdn-rel")
    tls = devtls.DevTLS(fleet.data / "tls")
    with StaticHTTPS(fleet.releases, tls.cert, tls.key) as static:
        url = f"https://localhost:{static.port}/{rel.name}/manifest.json"
        main = f"import mpota\nmpota.probation()\nprint('RESULT', mpota.update({url!r}))\n"
        board = fleet.device(config=WIFI | {"health": {"server": False}}, main_py=main)
        records = board.boot(max_boots=3)
    assert story(records) == [("ota_0", "1.0.0", "reset"), ("ota_1", "2.0.0", "repl")], \
        records[0].output
    assert otadata_states(board) == ["VALID", "VALID"]
