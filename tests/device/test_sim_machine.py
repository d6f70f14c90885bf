"""esp32.NVS, machine and network on the simulated board."""

from __future__ import annotations

import json
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


JOIN = """
import network, time
w = network.WLAN(network.STA_IF)
def join(ssid="ssid", key="key"):
    w.active(True)
    w.connect(ssid, key)
    t = time.ticks_ms()  # a failure is known after one scan (300 ms in the sim)
    while not w.isconnected() and time.ticks_diff(time.ticks_ms(), t) < 500:
        time.sleep_ms(20)
    return [w.isconnected(), w.status()]
"""


def test_network_link_follows_firmware(new_board) -> None:
    for behaviour, expected in (("healthy", [True, 1010]), ("health-fail", [False, 201])):
        board = new_board("1.0.0", behaviour=behaviour)
        board.boot(max_boots=1)
        assert results(run_device(board, PRELUDE + JOIN + "result(join())\n")) == [expected]


def test_station_joins_only_the_aps_in_the_air(booted: SimBoard) -> None:
    (booted.sim_dir / "air.json").write_text(json.dumps({"aps": {"home": "secret",
                                                                 "open": None}}))
    out = device(booted, JOIN + """
result([w.isconnected(), w.status(), w.active()])       # down after a reset
result(join("elsewhere", "secret"))                   # no such AP
result(join("home", "wrong"))                         # wrong key
result(join("open", None))
w.disconnect()
result([w.isconnected(), w.status()])
result(join("home", "secret"))
result(network.WLAN(network.STA_IF).isconnected())  # one interface
w.active(False)
result([w.isconnected(), w.status()])
""")
    assert out == [[False, 1000, False], [False, 201], [False, 202], [True, 1010],
                   [False, 1000], [True, 1010], True, [False, 1000]]


def test_a_failure_reason_stays_until_a_join_succeeds(booted: SimBoard) -> None:
    # as network_wlan.c: status() reports the last disconnect reason while the
    # driver retries, even right after a new connect()
    (booted.sim_dir / "air.json").write_text(json.dumps({"aps": {"home": "k"},
                                                         "join_ms": 300}))
    out = device(booted, JOIN + """
result(join("nowhere"))
w.connect("home", "k")
result([w.isconnected(), w.status()])
time.sleep_ms(400)
result([w.isconnected(), w.status()])
""")
    assert out == [[False, 201], [False, 201], [True, 1010]]


def test_station_is_kept_across_a_soft_reset_and_down_after_a_hard_one(booted: SimBoard) -> None:
    booted.write_file("main.py", """
import machine, network
w = network.WLAN(network.STA_IF)
print("cause", machine.reset_cause(), "connected", w.isconnected())
if machine.reset_cause() == machine.PWRON_RESET:
    w.active(True)
    w.connect("ssid", "key")
    machine.soft_reset()
elif machine.reset_cause() == machine.SOFT_RESET:
    machine.reset()
""")
    records = booted.boot(max_boots=4)
    assert [r.ended for r in records] == ["soft-reset", "reset", "repl"]
    assert "cause 1 connected False" in records[0].output
    assert "cause 5 connected True" in records[1].output
    assert "cause 2 connected False" in records[2].output


def test_sockets_reach_nothing_while_the_station_is_down(booted: SimBoard) -> None:
    out = device(booted, JOIN + """
import socket
listener = socket.socket()  # the board's own loopback works without Wi-Fi
listener.bind(socket.getaddrinfo("127.0.0.1", 0)[0][-1])
listener.listen(1)
result(err(socket.getaddrinfo, "localhost", 443))
s = socket.socket()
result(err(s.connect, socket.getaddrinfo("127.0.0.1", 443)[0][-1]))
s.close()
join()
result(socket.getaddrinfo("localhost", 443)[0][-1] is not None)
""")
    assert out == [[-202], [118, "EHOSTUNREACH"], True]


def test_timer_callbacks_run_between_bytecodes_and_while_sleeping(booted: SimBoard) -> None:
    out = device(booted, """
import machine, time
ticks = []
t = machine.Timer(-1)
t.init(period=50, callback=lambda tm: ticks.append(tm))
time.sleep_ms(1000)                 # a long sleep: the scheduler runs meanwhile
result([len(ticks) >= 10, ticks[0] is t])
t.deinit()
n = len(ticks)
time.sleep(0.3)
result(len(ticks) - n <= 1)         # stopped (one tick may have been queued)
once = []
machine.Timer(0, mode=machine.Timer.ONE_SHOT, period=30, callback=lambda tm: once.append(1))
a = machine.Timer(1, period=20, callback=lambda tm: once.append(2))
machine.Timer(1).init(period=1000, callback=lambda tm: None)  # the same hardware timer
time.sleep_ms(300)
result(once)
result(err(machine.Timer, 7))
""")
    assert out == [[True, True], True, [1], ["ValueError",
                                              "Timer(7) doesn't exist, there are only 4 "
                                              "hardware timers"]]


def test_a_timer_fed_watchdog_keeps_a_sleeping_program_alive(booted: SimBoard) -> None:
    booted.write_file("main.py", """
import machine, time
wdt = machine.WDT(timeout=500)
machine.Timer(-1, period=100, callback=lambda t: wdt.feed())
time.sleep(3)
print("slept through")
machine.Timer(-1)  # a new virtual timer; the feeding one goes on
while True:
    time.sleep_ms(50)
""")
    records = booted.boot(max_boots=2, timeout=4.0)
    assert [r.ended for r in records] == ["still-running"], records[0].output
    assert "slept through" in records[0].output


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
