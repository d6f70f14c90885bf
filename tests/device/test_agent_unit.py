"""The agent's decisions on the unix port, with fakes instead of a simulated board:
an in-memory server link (check, report), fake hardware and partitions, a state
file in a temporary directory.  No boot, no TLS, no flash image."""

from __future__ import annotations

import tempfile
from typing import Any

import pytest

from helpers import unix_results

FAKES = """
import os
import mpota
from mpota import state
from mpota.agent import Agent
from mpota.errors import DownloadError, ManifestError, OTAError, TransportError

class Part:
    def __init__(self, label, blocks=16):
        self.label = label
        self.data = bytearray(b"\\xff" * 4096 * blocks)
        self.booted = False
    def ioctl(self, cmd, arg):
        return {4: len(self.data) // 4096, 5: 4096, 6: 0}.get(cmd, 0)
    def info(self):
        return (0, 0x11, 0, len(self.data), self.label, False)
    def readblocks(self, block, buf, offset=0):
        buf[:] = self.data[block * 4096 + offset:block * 4096 + offset + len(buf)]
    def writeblocks(self, block, buf, offset=0):
        self.data[block * 4096 + offset:block * 4096 + offset + len(buf)] = buf
    def set_boot(self):
        self.booted = True

class NVS:
    def get_i32(self, key):
        raise OSError(-4354)

class HW:
    def __init__(self):
        self.slots = (Part("ota_0"), Part("ota_1"))
        self.resets = 0
    def running(self):
        return self.slots[0]
    def next_slot(self):
        return self.slots[1]
    def label(self, part):
        return part.label
    def nvs(self):
        return NVS()
    def feed(self):
        pass
    def reset(self):
        self.resets += 1

class Link:
    # the server link's two calls, in memory
    def __init__(self, offer=None):
        self.offer = offer or {"update": False}
        self.asked = []
        self.reports = []
    def check(self, agent, code):
        self.asked.append(code)
        return dict(self.offer)
    def report(self, agent, body):
        self.reports.append(body)

class Counting(state.State):
    saves = 0
    def save(self, **changes):
        Counting.saves += 1
        state.State.save(self, **changes)

def cfg(**policy):
    p = {"auto_apply": True, "window": None, "reboot_delay_s": 0, "clock_trusted": False}
    p.update(policy)
    return {"server": "https://ota.example", "device_id": "d1", "token": "t", "board": "b",
            "chip_id": 0, "version": "1.0.0", "version_code": 1, "policy": p, "cas": [],
            "download": {"stall_s": 1, "redirects": 3}}

def agent(link=None, busy=None, **policy):
    path = TMP + "/st%d.json" % len(os.listdir(TMP))
    return Agent(cfg(**policy), HW(), Counting(path), busy=busy, link=link or Link())

def code_of(f, *a):
    try:
        f(*a)
    except OTAError as e:
        return e.code
    return None
"""


def run(code: str) -> list[Any]:
    tmp = tempfile.mkdtemp(prefix="mpota-unit-")
    return unix_results(f"TMP = {tmp!r}\n" + FAKES + code)


def test_check_passes_the_running_version_and_skips_rejected_releases() -> None:
    (got,) = run("""
link = Link({"update": True, "version": "2.0.0", "version_code": 2, "manifest": "",
             "signature": "", "payload_url": "https://x/p"})
a = agent(link)
first = a.check()
a.st.save(rejected=[2])
skipped = a.check()
forced = a.check(skip_rejected=False)
result([link.asked, first["version_code"], skipped, forced["version_code"]])
""")
    assert got == [[1, 1, 1], 2, None, 2]


def test_reports_go_through_the_link_and_never_raise() -> None:
    (got,) = run("""
class Broken(Link):
    def report(self, agent, body):
        raise TransportError("down")
a = agent()
a.report("STAGED", "detail", 2)
b = agent(Broken())
b.report("FAILED")  # printed, not raised
result(a.link.reports)
""")
    assert got == [{"state": "STAGED", "version": "1.0.0", "version_code": 1,
                    "target_version_code": 2, "detail": "detail"}]


def test_a_refused_manifest_rejects_the_release_a_drop_does_not() -> None:
    (got,) = run("""
a = agent()
a.st.save(state=state.DOWNLOADING, written=8192, target={"version_code": 2})
a.interrupted(TransportError("dropped"))
after_drop = [a.st.name, a.st.get("written"), a.st.get("last_result")["state"],
              a.st.get("rejected", [])]
a.fail(ManifestError("no", "bad-signature"), "release refused")
after_refusal = [a.st.name, a.st.get("written"), a.st.get("last_result")["code"],
                 a.st.get("rejected")]
a.fail(DownloadError("404", 404), "download stopped")
result([after_drop, after_refusal, a.st.get("rejected"),
        [r["state"] for r in a.link.reports]])
""")
    after_drop, after_refusal, rejected, reports = got
    assert after_drop == ["DOWNLOADING", 8192, "INTERRUPTED", []]
    assert after_refusal == ["IDLE", 0, "bad-signature", [2]]
    assert rejected == [2]
    assert reports == ["INTERRUPTED", "FAILED", "FAILED"]


def test_a_refused_new_offer_leaves_the_download_in_progress() -> None:
    (got,) = run("""
a = agent()
a.st.save(state=state.DOWNLOADING, written=4096, target={"version_code": 2})
a.fail(ManifestError("key", "unknown-key"), "release refused", 3)
result([a.st.name, a.st.get("written"), a.st.get("rejected"),
        a.st.get("last_result")["version_code"]])
""")
    assert got == ["DOWNLOADING", 4096, [3], 3]


def test_begin_saves_once_and_resumes_at_a_whole_block() -> None:
    (got,) = run("""
class Fixed(Agent):
    def verify(self, raw, sig, size):
        return {"version": "2.0.0", "version_code": 2, "security_counter": 0,
                "sha256": "ab" * 32, "size": 50000, "payload_size": 50000, "iv": None}, None
a = Fixed(cfg(), HW(), Counting(TMP + "/begin.json"), link=Link())
a.st.save(state=state.DOWNLOADING, written=10000, target={"sha256": "ab" * 32},
          installed={"ota_1": {"version": "0.9"}})
Counting.saves = 0
part, target, key, written = a.begin(b"m", b"s", "https://x/p")
saves = Counting.saves
stale = Fixed(cfg(), HW(), Counting(TMP + "/stale.json"), link=Link())
stale.st.save(state=state.DOWNLOADING, written=10 ** 9, target={"sha256": "ab" * 32})
result([saves, written, a.st.get("installed"), target["slot"], a.st.name,
        stale.begin(b"m", b"s", "https://x/p")[3]])
""")
    assert got == [1, 8192, {}, "ota_1", "DOWNLOADING", 0]


def test_begin_refuses_while_an_update_is_staged() -> None:
    (got,) = run("""
a = agent()
a.st.save(state=state.STAGED)
result(code_of(a.begin, b"m", b"s", "https://x/p"))
""")
    assert got == "state"


@pytest.mark.parametrize("policy, busy, force, expect", [
    ({}, False, False, None),
    ({}, True, True, "busy"),  # force never overrides a busy application
    ({"window": [0, 1]}, False, False, "busy"),  # no trusted clock: outside the window
    ({"window": [0, 1]}, False, True, None),  # force overrides the window
    ({"reboot_delay_s": 3600}, False, False, "busy"),
    ({"reboot_delay_s": 3600}, False, True, None),
])
def test_apply_decides_by_the_policy_code(policy: dict[str, Any], busy: bool, force: bool,
                                         expect: str | None) -> None:
    (got,) = run(f"""
import hashlib, binascii, time
a = agent(busy=lambda: {busy!r}, **{policy!r})
image = b"\\xe9" + bytes(4095)
a.hw.slots[1].data[:4096] = image
a.st.save(state=state.STAGED, staged_at=time.time(), target={{
    "slot": "ota_1", "version": "2.0.0", "version_code": 2, "size": 4096,
    "sha256": binascii.hexlify(hashlib.sha256(image).digest()).decode()}})
code = code_of(a.apply, {force!r})
result([code, a.st.name, a.hw.resets, a.hw.slots[1].booted])
""")
    if expect is None:
        assert got == [None, "REBOOTING", 1, True]
    else:
        assert got == [expect, "STAGED", 0, False]


@pytest.mark.parametrize("args, verdict", [
    # ota_state, agent state, target slot, running slot, reset cause, probation failure
    ((1, "REBOOTING", "ota_1", "ota_1", 2, None), ["probation", None, False]),
    ((1, "IDLE", None, "ota_0", 1, None), ["probation", None, False]),
    ((2, "PROBATION", "ota_1", "ota_1", 1, None), ["confirmed", None, False]),
    ((2, "REBOOTING", "ota_1", "ota_0", 1, None), ["rolled-back", "power", False]),
    ((2, "PROBATION", "ota_1", "ota_0", 3, None), ["rolled-back", "watchdog", True]),
    ((2, "PROBATION", "ota_1", "ota_0", 1, "health check failed: x"),
     ["rolled-back", "health check failed: x", True]),
    ((2, "IDLE", None, "ota_0", 2, None), [None, None, False]),
    ((None, "DOWNLOADING", "ota_1", "ota_0", 2, None), [None, None, False]),
])
def test_boot_classification(args: tuple[Any, ...], verdict: list[Any]) -> None:
    (got,) = unix_results(f"""
from mpota import health
result(list(health.classify(*{args!r})))
""")
    assert got[0] == verdict[0] and got[2] == verdict[2]
    if verdict[1] is None:
        assert got[1] is None
    else:
        assert verdict[1] in got[1]
