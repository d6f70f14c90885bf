"""esp32.NVS, machine and network on the simulated board."""

from __future__ import annotations

import time

from helpers import PRELUDE, results, run_device
from mpota_host.sim.harness import SimBoard


def device(board: SimBoard, code: str) -> list:
    return results(run_device(board, PRELUDE + code))


def test_nvs_persists_across_boots_and_reports_like_esp_idf(booted: SimBoard) -> None:
    out = device(
        booted,
        """
from esp32 import NVS
n = NVS("mpota")
n.set_i32("floor", 7)
n.set_blob("key", b"\\x01\\x02\\x03")
n.commit()
result(n.get_i32("floor"))
buf = bytearray(8)
result([n.get_blob("key", buf), list(buf[:3])])
result(err(n.get_i32, "missing"))
result(err(n.get_blob, "key", bytearray(2)))
result(err(n.set_i32, "a-key-longer-than-15", 1))
result(err(n.get_i32, "key"))
result(err(NVS("other").get_i32, "floor"))
""",
    )
    assert out[0] == 7
    assert out[1] == [3, [1, 2, 3]]
    assert out[2] == [-4354, "ESP_ERR_NVS_NOT_FOUND"]
    assert out[3] == [-4364, "ESP_ERR_NVS_INVALID_LENGTH"]
    assert out[4] == [-4361, "ESP_ERR_NVS_KEY_TOO_LONG"]
    assert out[5] == [-4355, "ESP_ERR_NVS_TYPE_MISMATCH"]
    assert out[6] == [-4354, "ESP_ERR_NVS_NOT_FOUND"]  # namespaces are separate
    booted.boot(max_boots=1)
    out = device(
        booted,
        """
from esp32 import NVS
n = NVS("mpota")
result(n.get_i32("floor"))
n.erase_key("floor")
result(err(n.get_i32, "floor"))
result(err(n.erase_key, "floor"))
""",
    )
    assert out == [7, [-4354, "ESP_ERR_NVS_NOT_FOUND"], [-4354, "ESP_ERR_NVS_NOT_FOUND"]]


def test_unique_id_is_the_board_mac(booted: SimBoard) -> None:
    (uid,) = device(
        booted,
        """
import machine, binascii
result(binascii.hexlify(machine.unique_id()).decode())
""",
    )
    assert uid == "240ac4000001" == booted.identity["mac"]


def test_reset_causes(booted: SimBoard) -> None:
    booted.write_file(
        "main.py",
        """
import machine
print("cause", machine.reset_cause())
if machine.reset_cause() == machine.PWRON_RESET:
    machine.reset()
""",
    )
    records = booted.boot(max_boots=3)
    causes = [
        int(line.split()[1])
        for r in records
        for line in r.output.splitlines()
        if line.startswith("cause")
    ]
    assert causes == [1, 2]  # power-on, then machine.reset() -> HARD_RESET (ESP_RST_SW)
    assert [r.ended for r in records] == ["reset", "repl"]


def test_sys_exit_is_a_soft_reset_without_bootloader(booted: SimBoard) -> None:
    booted.write_file(
        "main.py",
        """
import machine, sys
print("cause", machine.reset_cause())
if machine.reset_cause() != machine.SOFT_RESET:
    sys.exit()
""",
    )
    records = booted.boot(max_boots=3)
    assert [r.ended for r in records] == ["soft-reset", "repl"]
    assert "I (boot)" not in records[1].output  # a soft reset restarts only the VM
    assert "MPY: soft reboot" in records[1].output
    assert "cause 5" in records[1].output


def test_watchdog_fires_when_not_fed(booted: SimBoard) -> None:
    booted.write_file(
        "main.py",
        """
import machine, time
if machine.reset_cause() == machine.WDT_RESET:
    print("back after the watchdog")
else:
    wdt = machine.WDT(timeout=300)
    for _ in range(5):
        time.sleep_ms(100)
        wdt.feed()
    print("stopped feeding")
    while True:
        time.sleep_ms(10)
""",
    )
    start = time.monotonic()
    records = booted.boot(max_boots=3, timeout=20)
    assert [r.ended for r in records] == ["wdt", "repl"]
    assert "stopped feeding" in records[0].output
    assert records[0].seconds >= 0.5  # it was fed for half a second
    assert "back after the watchdog" in records[1].output
    assert time.monotonic() - start < 15


def test_watchdog_catches_a_blocking_call(booted: SimBoard) -> None:
    booted.write_file(
        "main.py",
        """
import machine, socket
if machine.reset_cause() != machine.WDT_RESET:
    machine.WDT(timeout=200)
    s = socket.socket()
    s.bind(socket.getaddrinfo("127.0.0.1", 0)[0][-1])
    s.listen(1)
    s.accept()   # blocks forever inside C
""",
    )
    records = booted.boot(max_boots=2, timeout=20)
    assert [r.ended for r in records] == ["wdt", "repl"]


def test_wdt_arguments(booted: SimBoard) -> None:
    out = device(
        booted,
        """
import machine
result(err(machine.WDT, 1, 1000))
result(err(machine.WDT, 0, 0))
""",
    )
    assert out == [["ValueError"], ["ValueError", "WDT timeout too short"]]


def test_unfed_program_without_watchdog_is_left_running(booted: SimBoard) -> None:
    booted.write_file("main.py", "import time\nwhile True:\n    time.sleep_ms(50)\n")
    records = booted.boot(max_boots=2, timeout=1.0)
    assert [r.ended for r in records] == ["still-running"]


def test_network_link_follows_firmware(new_board) -> None:
    code = (
        PRELUDE
        + """
import network
w = network.WLAN(network.STA_IF)
w.active(True)
w.connect("ssid", "key")
result([w.isconnected(), w.status()])
"""
    )
    for behaviour, expected in (("healthy", [True, 1010]), ("health-fail", [False, 201])):
        board = new_board("1.0.0", behaviour=behaviour)
        board.boot(max_boots=1)
        assert results(run_device(board, code)) == [expected]


def test_device_code_gets_its_heap_budget_in_one_piece(booted: SimBoard) -> None:
    code = PRELUDE + """
import gc
gc.collect()
free = gc.mem_free()
def fits(n):
    try:
        bytearray(n)
        return True
    except MemoryError:
        return False
result([free, fits(int(free * 0.8)), fits(free + 4096)])
"""
    for heap, budget in (("32K", 32768), ("64K", 65536)):
        ((free, big_fits, over_fits),) = results(run_device(booted, code, heapsize=heap))
        assert budget - 6144 < free <= budget  # the snippet itself takes a few KB
        assert big_fits and not over_fits
