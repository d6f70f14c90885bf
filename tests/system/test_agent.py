"""The update agent end to end: real HTTPS server, real TLS, simulated boards."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any

import pytest

from helpers import BOARD_8MB, heap_for
from mpota_host import devtls
from mpota_host.server.app import start_server
from mpota_host.sim.harness import AGENT_MODULES, BootRecord, SimBoard
from netfaults import FaultProxy, RedirectingHTTPS, StaticHTTPS

# every test here runs with the blocking agent and with the asyncio one
pytestmark = pytest.mark.usefixtures("driver")

SLOT1 = 0x190000
WIFI = {"wifi": {"ssid": "sim", "key": "sim-key"}}


def device_id(board: SimBoard) -> str:
    return str(json.loads((board.fs / "mpota.json").read_text())["device_id"])


def agent_state(board: SimBoard) -> dict[str, Any]:
    path = board.fs / "mpota_state.json"
    return json.loads(path.read_text()) if path.exists() else {}


def otadata_states(board: SimBoard) -> list[str]:
    return [e["state"] for e in board.status()["otadata"]]


def story(records: list[BootRecord]) -> list[tuple[str | None, str | None, str]]:
    return [(r.slot, r.version, r.kind) for r in records]


@pytest.mark.parametrize("heap, frozen", [("64K", ()), ("40K", AGENT_MODULES)],
                         ids=["mpy-64K", "frozen-40K"])
def test_happy_path_in_a_small_heap(fleet, heap: str, frozen: tuple[str, ...],
                                    driver: str) -> None:
    fleet.publish("2.0.0", 2, size=1536 * 1024)
    board = fleet.device(config=WIFI)
    board.clear_counters()
    # the agent as .mpy files (as mip and mpota provision install it) in a 64 KiB
    # heap, and frozen into the firmware in 40 KiB
    records = board.boot(max_boots=4, heapsize=heap_for(driver, heap), frozen=frozen)
    assert story(records) == [("ota_0", "1.0.0", "reset"), ("ota_1", "2.0.0", "repl")], \
        records[-1].output
    assert "CONFIRMED 2.0.0 in ota_1" in records[1].output
    assert fleet.states(device_id(board)) == ["STAGED", "REBOOTING", "CONFIRMED"]
    assert otadata_states(board) == ["VALID", "VALID"]
    counters = board.counters()
    for block in range(1536 * 1024 // 4096):
        assert counters.sector(SLOT1 + block * 4096) == (1, 1), block
    state = agent_state(board)
    assert state["state"] == "IDLE" and state["last_result"]["state"] == "CONFIRMED"
    assert state["installed"]["ota_1"] == {"version": "2.0.0", "version_code": 2,
                                           "security_counter": 0}
    # the next boot stays on v2, and the agent knows it is up to date
    assert story(board.boot(max_boots=1)) == [("ota_1", "2.0.0", "repl")]


def test_dropped_connections_resume(fleet) -> None:
    size = 512 * 1024
    fleet.publish("2.0.0", 2, size=size)
    rng = random.Random(7)
    # the first connection also carries the update check and a report
    cuts: list[int | None] = [rng.randrange(20_000, 150_000) for _ in range(8)]
    with FaultProxy(fleet.server.port, cuts) as proxy:
        board = fleet.device(port=proxy.port, config=WIFI | {"health": {"server": False}})
        records = board.boot(max_boots=3)
        assert story(records)[-1] == ("ota_1", "2.0.0", "repl"), records[0].output
        assert proxy.cut_count >= 6
        assert 6 <= records[0].output.count("retrying at byte") <= proxy.cut_count
        # each drop costs at most one block plus TLS and HTTP overhead
        window = 65536
        assert proxy.down_bytes < size + 8 * (4096 + 16384) + (size // window) * 2048
    assert otadata_states(board) == ["VALID", "VALID"]


def test_server_that_ignores_range(fleet) -> None:
    rel = fleet.publish("2.0.0", 2, size=128 * 1024, name="static-rel")
    tls = devtls.DevTLS(fleet.data / "tls")
    with StaticHTTPS(fleet.releases, tls.cert, tls.key) as static:
        url = f"https://localhost:{static.port}/{rel.name}/"
        main = ("import mpota\nmpota.probation()\n"
                f"r = mpota.update({url!r})\nprint('RESULT', r)\n")
        board = fleet.device(config=WIFI | {"download": {"window": 16384, "backoff_ms": 10}},
                             main_py=main)
        records = board.boot(max_boots=3)
    assert story(records) == [("ota_0", "1.0.0", "reset"), ("ota_1", "2.0.0", "repl")], \
        records[0].output
    assert otadata_states(board) == ["VALID", "VALID"]


def _refused(board: SimBoard, records: list[BootRecord], error: str,
             version: str = "1.0.0") -> None:
    assert story(records) == [("ota_0", version, "repl")], records[0].output
    assert error in records[0].output, records[0].output
    assert otadata_states(board) == ["VALID", "UNDEFINED"]
    assert board.status()["boot_slot"] == "ota_0"


def test_wrong_ca_is_refused(fleet) -> None:
    fleet.publish("2.0.0", 2)
    other = devtls.create(fleet.root / "other-ca")
    board = fleet.device(ca_der=other.ca_der.read_bytes(), config=WIFI)
    board.clear_counters()
    records = board.boot(max_boots=2)
    _refused(board, records, "mpota: tls:")
    assert board.counters().in_range(SLOT1, 0x180000) == (0, 0)


def test_wrong_hostname_is_refused(fleet) -> None:
    fleet.publish("2.0.0", 2)
    tls = devtls.DevTLS(fleet.data / "tls")
    # a certificate from the trusted CA, but for another name
    elsewhere = devtls.create(fleet.root / "elsewhere", hostnames=("updates.example.com",))
    shutil.copy(tls.ca_pem, elsewhere.directory / "unused-ca.pem")
    server = start_server(fleet.releases, fleet.root / "data2", cert=elsewhere.cert,
                          key=elsewhere.key)
    try:
        board = fleet.device(port=server.port, ca_der=elsewhere.ca_der.read_bytes(), config=WIFI)
        _refused(board, board.boot(max_boots=2), "mpota: tls:")
    finally:
        server.stop()


def test_tampered_payload_never_becomes_bootable(fleet) -> None:
    rel = fleet.publish("2.0.0", 2)
    raw = bytearray((rel / "payload").read_bytes())
    raw[20000] ^= 0x01
    (rel / "payload").write_bytes(raw)
    board = fleet.device(config=WIFI)
    records = board.boot(max_boots=2)
    _refused(board, records, "does not match the manifest")
    assert "FAILED" in fleet.states(device_id(board))
    assert agent_state(board)["last_result"]["code"] == "image"


def test_release_signed_by_an_unknown_key(fleet) -> None:
    from cryptography.hazmat.primitives.asymmetric import ec

    fleet.publish("2.0.0", 2, key=ec.generate_private_key(ec.SECP256R1()))
    board = fleet.device(config=WIFI)
    board.clear_counters()
    _refused(board, board.boot(max_boots=2), "mpota: unknown-key:")
    assert board.counters().in_range(SLOT1, 0x180000) == (0, 0)
    assert agent_state(board)["last_result"]["code"] == "unknown-key"


@pytest.mark.parametrize(("version_code", "board_name", "error"), [
    (3, "esp32-generic-4mb", "mpota: downgrade:"),  # device runs version_code 5
    (9, "esp32-generic-8mb", "mpota: wrong-board:"),
])
def test_direct_release_refused_on_the_device(fleet, version_code: int, board_name: str,
                                              error: str) -> None:
    rel = fleet.publish("3.0.0", version_code, board=board_name, name="direct")
    tls = devtls.DevTLS(fleet.data / "tls")
    with StaticHTTPS(fleet.releases, tls.cert, tls.key) as static:
        main = ("import mpota\n"
                f"print('RESULT', mpota.update('https://localhost:{static.port}/{rel.name}/'))\n")
        board = fleet.device(version="5.0.0", version_code=5, config=WIFI, main_py=main)
        board.clear_counters()
        records = board.boot(max_boots=2)
    _refused(board, records, error, "5.0.0")
    assert board.counters().in_range(SLOT1, 0x180000) == (0, 0)


@pytest.mark.parametrize(("behaviour", "reason"), [
    ("health-fail", "health check failed: network is down"),
    ("crash", "reset or crashed before confirming"),
    ("hang", "watchdog fired"),
])
def test_bad_firmware_rolls_back_and_is_reported(fleet, behaviour: str, reason: str) -> None:
    fleet.publish("2.0.0", 2, behaviour=behaviour)
    board = fleet.device(config=WIFI | {"watchdog_ms": 1500})
    records = board.boot(max_boots=4, timeout=30)
    assert story(records) == [("ota_0", "1.0.0", "reset"),
                              ("ota_1", "2.0.0", {"health-fail": "reset", "crash": "panic",
                                                  "hang": "wdt"}[behaviour]),
                              ("ota_0", "1.0.0", "repl")], records[-1].output
    assert otadata_states(board)[1] == "ABORTED"
    rolled = [r for r in fleet.reports(device_id(board)) if r["state"] == "ROLLED_BACK"]
    assert len(rolled) == 1 and reason in rolled[0]["detail"], fleet.reports(device_id(board))
    state = agent_state(board)
    assert state["last_result"]["state"] == "ROLLED_BACK" and state["state"] == "IDLE"
    # the server keeps offering v2, but the device does not loop: it stays on v1
    # until someone publishes a fix (the agent would retry on its next poll)


def test_busy_device_is_not_rebooted(fleet, driver: str) -> None:
    fleet.publish("2.0.0", 2)
    main = ("import mpota\n"
            "@mpota.busy_check\n"
            "def busy():\n"
            "    import os\n"
            "    return 'busy.flag' in os.listdir()\n"
            "mpota.probation()\n"
            "print('RESULT', mpota.poll())\n")
    board = fleet.device(config=WIFI | {"download": {"busy_wait_s": 1}}, main_py=main)
    board.write_file("busy.flag", "1")
    records = board.boot(max_boots=3)
    assert story(records) == [("ota_0", "1.0.0", "repl")]
    if driver == "blocking":
        # the blocking agent holds the application anyway: it downloads, never reboots
        assert "not rebooting: the application is busy" in records[0].output
        assert agent_state(board)["state"] == "STAGED"
        assert otadata_states(board) == ["VALID", "UNDEFINED"]  # verified in ota_1, not selected
    else:
        # the asyncio agent pauses the download while the application is busy,
        # and after download.busy_wait_s ends the round; the next one resumes it
        assert "the application stayed busy for 1 s" in records[0].output
        assert "'RETRY_LATER'" in records[0].output and "'busy'" in records[0].output
        # (it paused at the signature check's first pause: nothing refused, nothing written)
        state = agent_state(board)
        assert state.get("state", "IDLE") in ("IDLE", "DOWNLOADING"), state
        assert not state.get("rejected"), state
        assert "FAILED" not in fleet.states(device_id(board))
    (board.fs / "busy.flag").unlink()
    records = board.boot(max_boots=3)
    assert story(records) == [("ota_0", "1.0.0", "reset"), ("ota_1", "2.0.0", "repl")]


def test_download_only_waits_for_apply(fleet) -> None:
    fleet.publish("2.0.0", 2)
    board = fleet.device(config=WIFI | {"policy": {"auto_apply": False}})
    records = board.boot(max_boots=2)
    assert story(records) == [("ota_0", "1.0.0", "repl")]
    assert agent_state(board)["state"] == "STAGED"
    board.write_file("main.py", "import mpota\nmpota.probation()\nmpota.apply()\n")
    assert story(board.boot(max_boots=3))[-1] == ("ota_1", "2.0.0", "repl")


def test_8mb_board_updates(fleet) -> None:
    fleet.publish("2.0.0", 2, board="esp32-generic-8mb", size=2 * 1024 * 1024)
    board = fleet.device(board_dir=BOARD_8MB, config=WIFI)
    records = board.boot(max_boots=3)
    assert story(records) == [("ota_0", "1.0.0", "reset"), ("ota_1", "2.0.0", "repl")]


def _copy(board: SimBoard, dest: Path) -> SimBoard:
    dest.mkdir()
    flash = dest / board.flash.name
    shutil.copyfile(board.flash, flash)
    shutil.copytree(board.sim_dir, Path(str(flash) + ".sim"))
    return SimBoard(flash)


def test_power_cut_at_every_flash_operation_of_an_update(fleet, tmp_path: Path) -> None:
    fleet.publish("2.0.0", 2, size=5 * 4096)
    template = fleet.device(config=WIFI)
    probe = _copy(template, tmp_path / "probe")
    probe.clear_counters()
    records = probe.boot(max_boots=3)
    assert story(records)[-1] == ("ota_1", "2.0.0", "repl")
    total = probe.counters().total
    assert total >= 2 * 5 + 2 + 2 + 2 + 2  # fresh otadata, blocks, set_boot, pending, confirm
    for n in range(1, total + 1):
        board = _copy(template, tmp_path / f"cut{n}")
        board.clear_counters()
        records = board.boot(max_boots=4, cut_at=n)
        assert any(r.kind == "power-cut" for r in records), n
        assert records[-1].kind in ("repl", "reset"), (n, [r.line() for r in records])
        # power is back: the board boots a valid image, and the update completes
        records = board.boot(max_boots=4)
        assert story(records)[-1] == ("ota_1", "2.0.0", "repl"), \
            (n, [r.line() for r in records], records[-1].output)
        status = board.status()
        assert status["boot_slot"] == "ota_1", n
        # the entry the bootloader follows is VALID (which sector holds it depends on
        # where the power went: ESP-IDF may have had to start otadata afresh)
        active = max((e for e in status["otadata"] if e["valid"]), key=lambda e: e["seq"])
        assert active["state"] == "VALID", (n, status["otadata"])


def test_bad_config_is_reported(fleet) -> None:
    fleet.publish("2.0.0", 2)
    board = fleet.device(config=WIFI | {"server": "http://localhost:1"})
    records = board.boot(max_boots=1)
    assert "mpota: config:" in records[0].output and "must be an https:// URL" in records[0].output
    assert otadata_states(board) == ["VALID", "UNDEFINED"]


def test_repl_status_reports_the_slots(fleet) -> None:
    board = fleet.device(config=WIFI, main_py="import mpota\nprint('RESULT', mpota.status())\n")
    records = board.boot(max_boots=1)
    out = records[0].output
    assert "running ota_0 v1.0.0 (code 1, VALID); agent IDLE; next slot ota_1" in out, out


def test_redirects_are_followed_up_to_a_bound(fleet) -> None:
    rel = fleet.publish("2.0.0", 2, name="hops")
    tls = devtls.DevTLS(fleet.data / "tls")
    with RedirectingHTTPS(fleet.releases, tls.cert, tls.key) as static:
        base = f"https://localhost:{static.port}"
        main = ("import mpota\nmpota.probation()\n"
                f"print('RESULT', mpota.update('{base}/hop/5/{rel.name}/'))\n"
                f"print('RESULT', mpota.update('{base}/hop/2/{rel.name}/'))\n")
        board = fleet.device(config=WIFI, main_py=main)
        records = board.boot(max_boots=3)
    assert "more than 3 redirects" in records[0].output
    assert story(records) == [("ota_0", "1.0.0", "reset"), ("ota_1", "2.0.0", "repl")]


def test_stalled_download_times_out_then_resumes_after_a_reset(fleet) -> None:
    size = 256 * 1024
    fleet.publish("2.0.0", 2, size=size)
    with FaultProxy(fleet.server.port, stall_after=120_000) as proxy:
        board = fleet.device(port=proxy.port, config=WIFI | {
            "health": {"server": False},
            "download": {"stall_s": 1, "retries": 2, "backoff_ms": 10, "window": 16384}})
        records = board.boot(max_boots=2)
        out = records[0].output
        assert story(records) == [("ota_0", "1.0.0", "repl")], out
        assert "ETIMEDOUT" in out and "download failed 3 times in a row" in out, out
        state = agent_state(board)
        assert state["state"] == "DOWNLOADING" and 0 < state["written"] < size
        written = state["written"]
        proxy.stall_after = None
        board.clear_counters()
        records = board.boot(max_boots=3)
    assert story(records) == [("ota_0", "1.0.0", "reset"), ("ota_1", "2.0.0", "repl")]
    assert f"resumed at byte {written}" in " ".join(r["detail"] or "" for r in
                                                 fleet.reports(device_id(board)))
    counters = board.counters()
    # blocks already on flash were only read back, not erased again
    assert counters.in_range(SLOT1, written)[0] == 0
    assert counters.in_range(SLOT1 + written, size - written)[0] == (size - written) // 4096


def test_wrong_token_gets_a_clear_error(fleet) -> None:
    fleet.publish("2.0.0", 2)
    board = fleet.device(config=WIFI | {"token": "not-the-token"})
    records = board.boot(max_boots=2)
    assert "HTTP 401: the server does not accept this device's id/token" in records[0].output
    assert story(records) == [("ota_0", "1.0.0", "repl")]
