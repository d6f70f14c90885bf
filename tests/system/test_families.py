"""Every ESP32 family with a board definition: the simulator boots a provisioned
agent on a board of that chip, updates it over real HTTPS, and rolls back an
image whose health check fails; an image built for another chip is refused."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from fleet import Fleet
from mpota_host import board as boards
from mpota_host import release
from mpota_host.firmware import write_image
from mpota_host.server.store import add_device
from mpota_host.sim.harness import SimBoard
from test_agent import WIFI, agent_state, device_id, otadata_states, story

# one board per family (chip); the ESP32 has its own tests everywhere else
FAMILIES = {
    "esp32s2": "esp32-s2-generic-4mb",
    "esp32s3": "esp32-s3-generic-8mb",
    "esp32c3": "esp32-c3-generic-4mb",
    "esp32c6": "esp32-c6-generic-4mb",
}
SIZE = 64 * 1024


def image(fleet: Fleet, layout: boards.Board, version: str, behaviour: str = "healthy") -> Path:
    path = fleet.root / f"fw-{layout.chip}-{version}-{behaviour}.bin"
    if not path.exists():
        write_image(path, version, behaviour, SIZE, chip_id=layout.chip_id,
                    flash_mb=layout.flash_size >> 20)
    return path


def publish(fleet: Fleet, layout: boards.Board, version: str, code: int,
            behaviour: str = "healthy") -> None:
    release.make_release(image(fleet, layout, version, behaviour),
                         fleet.releases / f"{layout.name}-{code}", layout.name, version, code,
                         fleet.key)


def device(fleet: Fleet, layout: boards.Board, config: dict[str, Any]) -> SimBoard:
    """As Fleet.device, on a board of this family with its chip's first image."""
    token = add_device(fleet.data, f"{layout.chip}-dev", board=layout.name)
    board = SimBoard.create(layout.name, image(fleet, layout, "1.0.0"),
                            fleet.root / f"{layout.chip}.flash")
    cfg = {
        "server": f"https://localhost:{fleet.server.port}", "ca": "mpota-ca.der",
        "device_id": f"{layout.chip}-dev", "token": token, "board": layout.name,
        "chip_id": layout.chip_id, "version": "1.0.0", "version_code": 1,
        "trusted_keys": ["signing.pub.pem"], "watchdog_ms": 5000,
        "download": {"backoff_ms": 20, "backoff_max_ms": 200, "stall_s": 5},
    } | config
    board.install_agent(cfg, {"mpota-ca.der": fleet.server.ca_der.read_bytes(),
                              "signing.pub.pem": fleet.pair.public.read_bytes()})
    return board


@pytest.mark.parametrize("chip", sorted(FAMILIES))
def test_family_boots_updates_and_rolls_back(fleet: Fleet, chip: str) -> None:
    layout = boards.require(FAMILIES[chip])
    assert layout.chip == chip
    board = device(fleet, layout, WIFI)
    assert json.loads((board.sim_dir / "board.json").read_text())["chip_id"] == layout.chip_id
    slot1 = layout.partition("ota_1").offset

    publish(fleet, layout, "2.0.0", 2)
    records = board.boot(max_boots=3)
    assert story(records) == [("ota_0", "1.0.0", "reset"), ("ota_1", "2.0.0", "repl")], \
        records[-1].output
    assert otadata_states(board) == ["VALID", "VALID"]
    written = board.flash.read_bytes()[slot1 : slot1 + SIZE]
    assert written == image(fleet, layout, "2.0.0").read_bytes()[:SIZE]
    assert written[12] == layout.chip_id  # the image header's chip id

    publish(fleet, layout, "3.0.0", 3, behaviour="health-fail")
    records = board.boot(max_boots=4, timeout=30)
    assert story(records) == [("ota_1", "2.0.0", "reset"), ("ota_0", "3.0.0", "reset"),
                              ("ota_1", "2.0.0", "repl")], records[-1].output
    assert otadata_states(board)[0] == "ABORTED"
    state = agent_state(board)
    assert state["last_result"]["state"] == "ROLLED_BACK", state
    assert "ROLLED_BACK" in fleet.states(device_id(board))


def test_an_image_for_another_chip_is_refused_by_set_boot(fleet: Fleet, tmp_path: Path) -> None:
    layout = boards.require(FAMILIES["esp32s3"])
    board = SimBoard.create(layout.name, image(fleet, layout, "1.0.0"), tmp_path / "s3.flash")
    assert board.boot(max_boots=1)[-1].ended == "repl"
    esp32_image = tmp_path / "esp32.bin"
    write_image(esp32_image, "2.0.0", "healthy", SIZE, chip_id=0)
    run = board.run("simstage", [str(esp32_image)])
    assert "chip id 0 in image, this chip is 9" in run.output, run.output
    assert "ESP_ERR_OTA_VALIDATE_FAILED" in run.output, run.output
    assert board.status()["boot_slot"] == "ota_0"
