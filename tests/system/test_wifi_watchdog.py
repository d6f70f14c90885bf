"""Wi-Fi bring-up by the agent and the watchdog after a confirmed update, on
simulated boards whose station is down after a reset and whose sockets reach
nothing until it is connected (device/sim/network.py, socket.py)."""

from __future__ import annotations

import ast
import json
import re
from typing import Any

import pytest

from mpota_host.sim.harness import SimBoard
from test_agent import WIFI, agent_state, device_id, story

# every test here runs with the blocking agent and with the asyncio one
pytestmark = pytest.mark.usefixtures("driver")

AIR = {"aps": {"sim": "sim-key"}}  # the one access point around the boards

SHOW_WLAN = ("import network\n"
             "w = network.WLAN(network.STA_IF)\n"
             "print('WLAN', w.active(), w.isconnected())\n")


def air(board: SimBoard, aps: dict[str, Any]) -> None:
    (board.sim_dir / "air.json").write_text(json.dumps(aps))


def wlan_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("WLAN ")]


def result(output: str) -> Any:
    lines = [line[7:] for line in output.splitlines() if line.startswith("RESULT ")]
    assert lines, output
    return ast.literal_eval(lines[-1])  # a value the board printed with repr()


@pytest.mark.parametrize("keep", [False, True])
def test_the_agent_brings_wifi_up_after_a_plain_reset(fleet, keep: bool) -> None:
    fleet.publish("2.0.0", 2)
    main = SHOW_WLAN + "import mpota\nmpota.probation()\nmpota.poll()\n" + SHOW_WLAN
    wifi = {"wifi": {"ssid": "sim", "key": "sim-key", "keep": keep}}
    board = fleet.device(config=wifi, main_py=main)
    air(board, AIR)
    records = board.boot(max_boots=3)
    # nothing but the agent connects: it downloads, reboots, confirms
    assert story(records) == [("ota_0", "1.0.0", "reset"), ("ota_1", "2.0.0", "repl")], \
        records[-1].output
    assert fleet.states(device_id(board)) == ["STAGED", "REBOOTING", "CONFIRMED"]
    assert wlan_lines(records[0].output) == ["WLAN False False"]  # down after a reset
    # after probation and the poll the station is as found, or kept up if asked
    assert wlan_lines(records[1].output) == ["WLAN False False",
                                             "WLAN True True" if keep else "WLAN False False"]


@pytest.mark.parametrize(("wifi", "air_", "reason"), [
    ({"ssid": "nowhere", "key": "sim-key"}, AIR,
     "no AP 'nowhere' found: check wifi.ssid and that the AP is in range"),
    ({"ssid": "sim", "key": "not-the-key"}, AIR, "wrong key for 'sim': check wifi.key"),
    ({"ssid": "sim", "key": "sim-key", "timeout_s": 1}, AIR | {"join_ms": 3000},
     "no connection to 'sim' after 1 s (status 1001)"),
])
def test_no_wifi_is_retry_later_with_the_reason(fleet, wifi: dict[str, Any],
                                                air_: dict[str, Any], reason: str) -> None:
    fleet.publish("2.0.0", 2)
    main = "import mpota\nprint('RESULT', repr(mpota.poll()))\n" + SHOW_WLAN
    board = fleet.device(config={"wifi": wifi}, main_py=main)
    air(board, air_)
    records = board.boot(max_boots=1)
    assert story(records) == [("ota_0", "1.0.0", "repl")]
    out = records[0].output
    assert result(out) == {"result": "RETRY_LATER", "error": "wifi", "reason": reason}
    assert f"mpota: wifi: {reason}" in out.splitlines()
    assert wlan_lines(out) == ["WLAN False False"]  # left as it was found
    assert fleet.reports(device_id(board)) == []  # the server never heard of it
    assert "last_result" not in agent_state(board)  # asking later may work: nothing recorded


def test_network_app_leaves_the_interface_alone(fleet) -> None:
    fleet.publish("2.0.0", 2)
    config = WIFI | {"network": "app", "policy": {"auto_apply": False}}
    # the application has not connected: the agent does not either
    main = "import mpota\nprint('RESULT', repr(mpota.poll()))\n" + SHOW_WLAN
    board = fleet.device(config=config, main_py=main)
    air(board, AIR)
    out = board.boot(max_boots=1)[0].output
    outcome = result(out)
    assert outcome["result"] == "RETRY_LATER" and outcome["error"] == "transport", outcome
    assert re.fullmatch(r"cannot connect to localhost:\d+: -202", outcome["reason"]), outcome
    assert wlan_lines(out) == ["WLAN False False"]
    # the application connects with its own settings: the agent uses the link
    # and leaves it up
    board.write_file("main.py", "import network\nw = network.WLAN(network.STA_IF)\n"
                     "w.active(True)\nw.connect('sim', 'sim-key')\n" + main)
    out = board.boot(max_boots=1)[0].output
    assert result(out) == {"result": "STAGED", "version": "2.0.0", "apply": "mpota.apply()"}
    assert wlan_lines(out) == ["WLAN True True"]


def test_a_station_the_application_connected_stays_connected(fleet) -> None:
    main = ("import network\nw = network.WLAN(network.STA_IF)\nw.active(True)\n"
            "w.connect('sim', 'sim-key')\n"
            "import mpota\nprint('RESULT', repr(mpota.poll()))\n" + SHOW_WLAN)
    board = fleet.device(config=WIFI, main_py=main)
    air(board, AIR)
    out = board.boot(max_boots=1)[0].output
    assert result(out) == "UP_TO_DATE"
    assert wlan_lines(out) == ["WLAN True True"]


# The watchdog after probation: app_watchdog_ms 1000 (the smallest), and the
# application runs for more than 10 x that once the update is confirmed.
ALIVE = """
import mpota, time, machine
mpota.probation()
mpota.poll()
start = time.ticks_ms()
while True:
    {feed}
    time.sleep({sleep})
    alive = time.ticks_diff(time.ticks_ms(), start)
    print("ALIVE", alive)
    if alive > {until}:
        break
{after}
"""


def alive(output: str) -> int:
    times = [int(line.split()[1]) for line in output.splitlines() if line.startswith("ALIVE ")]
    return max(times) if times else 0


def test_the_agent_feeds_the_watchdog_after_a_confirmed_update(fleet) -> None:
    fleet.publish("2.0.0", 2)
    # v2's application: 11 s of long sleeps, then a soft reset (a technician's
    # Ctrl-D): boot.py's mpota.boot() feeds the still running watchdog again
    main = ALIVE.format(feed="pass", sleep="0.5", until=11000,
                        after="if machine.reset_cause() != machine.SOFT_RESET:\n"
                              "    machine.soft_reset()\n")
    board = fleet.device(config=WIFI | {"watchdog_ms": 3000, "app_watchdog_ms": 1000},
                         main_py=main)
    records = board.boot(max_boots=4, timeout=16)
    assert [(r.slot, r.kind) for r in records] == [
        ("ota_0", "reset"), ("ota_1", "soft-reset"), ("ota_1", "repl")], \
        records[-1].output
    assert "CONFIRMED 2.0.0 in ota_1" in records[1].output
    assert alive(records[1].output) > 10 * 1000  # 10 x the watchdog's timeout, no reset
    assert alive(records[2].output) > 10 * 1000  # and on after the soft reset
    assert agent_state(board)["last_result"]["state"] == "CONFIRMED"


def test_in_app_mode_the_application_feeds_it_or_is_reset(fleet) -> None:
    fleet.publish("2.0.0", 2)
    # feeds with mpota.feed() for 11 s, then stops
    main = ALIVE.format(feed="mpota.feed()", sleep="0.2", until=11000,
                        after="print('STOPPED FEEDING')\nwhile True:\n    time.sleep(1)\n")
    board = fleet.device(config=WIFI | {"watchdog_ms": 3000, "app_watchdog_ms": 1000,
                                        "watchdog_after_confirm": "app"}, main_py=main)
    records = board.boot(max_boots=3, timeout=16)
    assert [(r.slot, r.kind) for r in records][:2] == [("ota_0", "reset"), ("ota_1", "wdt")], \
        records[-1].output
    assert "CONFIRMED 2.0.0 in ota_1" in records[1].output
    assert alive(records[1].output) > 10 * 1000 and "STOPPED FEEDING" in records[1].output
    # the image stays: it was confirmed before the application stopped feeding
    assert records[2].slot == "ota_1" and otadata_valid(board)


def otadata_valid(board: SimBoard) -> bool:
    return all(e["state"] == "VALID" for e in board.status()["otadata"])
