"""The asyncio agent as an application uses it (mpota.run beside its own
tasks) on simulated boards with the real server: the application keeps
running during an update, a cancelled round leaves a download the next one
resumes, a blocking call during a round is refused, and the rate cap paces
the download.  (Every update, fault and power-cut test also runs with the
asyncio driver: see the `driver` fixture.)"""

from __future__ import annotations

import re

from test_agent import WIFI, agent_state, device_id, story

# main.py of an asyncio application: a task that ticks every 10 ms and
# prints a line every 20 ticks, beside mpota.run(); its busy check prints the
# tick count whenever it changed since the agent's last pause; the program
# ends after `stop_ms` (on the first boot the update reboots the board before)
APP = """import asyncio, time, mpota
mpota.probation()
ticks = [0]
seen = [-1]

@mpota.busy_check
def busy():  # asked at every pause of the asyncio agent: shows the ticks go on
    if ticks[0] != seen[0]:
        seen[0] = ticks[0]
        print("AT PAUSE", ticks[0])
    return False

async def app():
    while True:
        await asyncio.sleep_ms(10)
        ticks[0] += 1
        if ticks[0] % 20 == 0:
            print("APP TICK", ticks[0])

async def main():
    asyncio.create_task(app())
    {start}
    await asyncio.sleep_ms({stop_ms})
    print("APP END", ticks[0])

asyncio.run(main())
"""


def app(start: str = "asyncio.create_task(mpota.run(every=3600))", stop_ms: int = 3000) -> str:
    return APP.format(start=start, stop_ms=stop_ms)


def test_run_updates_while_the_application_ticks(fleet) -> None:
    fleet.publish("2.0.0", 2, size=512 * 1024)
    board = fleet.device(config=WIFI, main_py=app())
    records = board.boot(max_boots=3)
    assert story(records) == [("ota_0", "1.0.0", "reset"), ("ota_1", "2.0.0", "repl")], \
        records[0].output
    first = records[0].output
    # the application ticked while the agent downloaded, verified and read back
    seen = [int(n) for n in re.findall(r"AT PAUSE (\d+)", first)]
    assert len(seen) >= 3 and seen == sorted(seen), first
    assert "CONFIRMED 2.0.0 in ota_1" in records[1].output
    assert "APP END" in records[1].output  # after the update the application goes on
    assert fleet.states(device_id(board)) == ["STAGED", "REBOOTING", "CONFIRMED"]


CANCEL = """
    t = asyncio.create_task(mpota.run(every=3600))
    import json
    while True:  # cancel the round once the download has saved some progress
        await asyncio.sleep_ms(5)
        try:
            st = json.load(open("mpota_state.json"))
        except (OSError, ValueError):
            continue
        if st.get("state") == "DOWNLOADING" and st.get("written", 0) > 0:
            break
    t.cancel()
    await asyncio.sleep_ms(50)
    st = json.load(open("mpota_state.json"))
    print("CANCELLED", st["state"], st["written"])
    print("STATUS", mpota.status()["state"])
"""


def test_a_cancelled_round_leaves_a_download_the_next_round_resumes(fleet) -> None:
    fleet.publish("2.0.0", 2, size=1024 * 1024)
    board = fleet.device(config=WIFI | {"download": {"window": 8192, "save_ms": 0}},
                         main_py=app(CANCEL, stop_ms=100))
    records = board.boot(max_boots=1)
    out = records[0].output
    assert story(records) == [("ota_0", "1.0.0", "repl")], out
    cancelled = re.search(r"CANCELLED DOWNLOADING (\d+)", out)
    assert cancelled and int(cancelled.group(1)) > 0, out
    assert "STATUS DOWNLOADING" in out, out  # the agent answers again after the cancel
    assert "Traceback" not in out and "APP END" in out, out
    # the next boot's blocking poll resumes where the cancelled round left off
    board.write_file("main.py", "import mpota\nmpota.probation()\nmpota.poll()\n")
    records = board.boot(max_boots=3)
    assert story(records) == [("ota_0", "1.0.0", "reset"), ("ota_1", "2.0.0", "repl")], \
        records[0].output
    staged = [r for r in fleet.reports(device_id(board)) if r["state"] == "STAGED"]
    assert staged and staged[0]["detail"].startswith("resumed at byte "), staged


BLOCKING_DURING_A_ROUND = """
    t = asyncio.create_task(aio.poll())
    while True:  # a blocking call from another task while the round downloads
        await asyncio.sleep_ms(5)
        st = mpota.status()
        if st.get("state") == "DOWNLOADING":
            break
    print("NESTED", mpota.poll())
    r = await t
    print("ROUND", r["result"])
"""


def test_a_blocking_call_during_a_round_is_refused(fleet) -> None:
    fleet.publish("2.0.0", 2, size=1024 * 1024)
    main = app("from mpota import aio\n" + BLOCKING_DURING_A_ROUND, stop_ms=10)
    board = fleet.device(config=WIFI | {"policy": {"auto_apply": False}}, main_py=main)
    records = board.boot(max_boots=1)
    out = records[0].output
    nested = re.search(r"NESTED (\{.*\})", out)
    assert nested, out
    assert "'result': 'RETRY_LATER'" in nested.group(1), out
    assert "'error': 'in-progress'" in nested.group(1), out
    assert "ROUND STAGED" in out, out
    assert agent_state(board)["state"] == "STAGED"


def test_max_rate_paces_the_download(fleet) -> None:
    size = 256 * 1024
    rate = 512 * 1024
    fleet.publish("2.0.0", 2, size=size)
    main = app("from mpota import aio\n    t0 = time.ticks_ms()\n    r = await aio.poll()\n"
               "    print('ROUND', r['result'], time.ticks_diff(time.ticks_ms(), t0))",
               stop_ms=10)
    board = fleet.device(config=WIFI | {"policy": {"auto_apply": False},
                                        "download": {"max_rate": rate}},
                         main_py=main)
    records = board.boot(max_boots=1)
    out = records[0].output
    found = re.search(r"ROUND STAGED (\d+)", out)
    assert found, out
    # the cap is a floor on the time (whatever else the machine does): the
    # payload cannot have come faster than max_rate, less the first block
    assert int(found.group(1)) >= (size - 4096) * 1000 // rate, out
    assert "APP TICK" in out, out  # the application ran while the agent waited
