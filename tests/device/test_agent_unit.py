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
    # (step generators, as mpota.link's: nothing to wait for here)
    def check(self, agent, code):
        self.asked.append(code)
        return dict(self.offer)
        yield
    def report(self, agent, body):
        self.reports.append(body)
        yield

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
            "trusted_pems": [],
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
first = mpota.drive(a.check())
a.st.save(rejected=[2])
skipped = mpota.drive(a.check())
forced = mpota.drive(a.check(skip_rejected=False))
result([link.asked, first["version_code"], skipped, forced["version_code"]])
""")
    assert got == [[1, 1, 1], 2, None, 2]


def test_reports_go_through_the_link_and_never_raise() -> None:
    (got,) = run("""
class Broken(Link):
    def report(self, agent, body):
        raise TransportError("down")
a = agent()
mpota.drive(a.report("STAGED", "detail", 2))
b = agent(Broken())
mpota.drive(b.report("FAILED"))  # printed, not raised
result(a.link.reports)
""")
    assert got == [{"state": "STAGED", "version": "1.0.0", "version_code": 1,
                    "target_version_code": 2, "detail": "detail"}]


def test_a_refused_manifest_rejects_the_release_a_drop_does_not() -> None:
    (got,) = run("""
a = agent()
a.st.save(state=state.DOWNLOADING, written=8192, target={"version_code": 2})
a.outcome("interrupted", TransportError("dropped"))
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
import sys
from mpota import accept

class Verify:
    # mpota.verify's answer for a good release (the verifier has its own tests)
    @staticmethod
    def release(raw, sig, pems, facts, nvs):
        return {"version": "2.0.0", "version_code": 2, "security_counter": 0,
                "sha256": "ab" * 32, "size": 50000, "payload_size": 50000}, None
        yield

def begin(a):
    sys.modules["mpota.verify"] = mpota.verify = Verify  # dropped after each verify
    return mpota.drive(accept.begin(a, b"m", b"s", "https://x/p"))

a = agent()
a.st.save(state=state.DOWNLOADING, written=10000, target={"sha256": "ab" * 32},
          installed={"ota_1": {"version": "0.9"}})
Counting.saves = 0
part, target, key, written = begin(a)
saves = Counting.saves
stale = agent()
stale.st.save(state=state.DOWNLOADING, written=10 ** 9, target={"sha256": "ab" * 32})
result([saves, written, a.st.get("installed"), target["slot"], target["resumed_at"],
        a.st.name, a.link.reports, begin(stale)[3]])
""")
    # no report: the server saw the offer; the resume is told with STAGED
    assert got == [1, 8192, {}, "ota_1", 8192, "DOWNLOADING", [], 0]


def test_begin_refuses_while_an_update_is_staged() -> None:
    (got,) = run("""
a = agent()
a.st.save(state=state.STAGED)
from mpota import accept
result(code_of(lambda: mpota.drive(accept.begin(a, b"m", b"s", "https://x/p"))))
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
code = code_of(lambda: mpota.drive(a.apply({force!r})))
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


DOWNLOAD = """
import sys, hashlib, binascii
from mpota import accept, install

IMAGE = b"\\xe9" + bytes(range(256)) * 156  # 39937 bytes: not a whole number of blocks

class Answer:
    def __init__(self, first):
        self.status, self.length = 206, len(IMAGE) - first
        self.range = "bytes %d-%d/%d" % (first, len(IMAGE) - 1, len(IMAGE))
        self.body = memoryview(IMAGE)[first:]
        self.pos = 0
    def url(self):
        return "https://x/p"
    def readinto(self, mv):
        n = min(len(mv), len(self.body) - self.pos)
        mv[:n] = self.body[self.pos:self.pos + n]
        self.pos += n
        return n

class Client:
    s = None
    def __init__(self):
        self.firsts = []
    def request(self, method, url, headers):
        first = int(headers["Range"][6:-1])
        self.firsts.append(first)
        return Answer(first)
        yield
    def close(self):
        pass

class Verify:
    @staticmethod
    def release(raw, sig, pems, facts, nvs):
        return {"version": "2.0.0", "version_code": 2, "security_counter": 0, "size": len(IMAGE),
                "payload_size": len(IMAGE),
                "sha256": binascii.hexlify(hashlib.sha256(IMAGE).digest()).decode()}, None
        yield

class Saves(Counting):
    log = []
    def save(self, **changes):
        Saves.log.append((changes.get("state", self.name), changes.get("written")))
        Counting.save(self, **changes)

def downloader(path, hw=None):
    a = Agent(cfg(), hw or HW(), Saves(TMP + path), link=Link())
    a.cfg["download"].update(window=4096, save_ms=0, retries=1, backoff_ms=1, backoff_max_ms=1)
    a._client = Client()
    return a

def install_once(a):
    sys.modules["mpota.verify"] = mpota.verify = Verify
    part, target, key, written = mpota.drive(accept.begin(a, b"m", b"s", "https://x/p"))
    from mpota import install
    mpota.drive(install.download(a, part, target, written, key))
"""


def test_the_last_progress_save_is_the_staged_one() -> None:
    (got,) = run(DOWNLOAD + """
a = downloader("/whole.json")
install_once(a)
result([Saves.log, a.st.name, [r["state"] for r in a.link.reports],
        bytes(a.hw.slots[1].data[:len(IMAGE)]) == IMAGE])
""")
    log, name, reports, same = got
    total = 39937
    assert log[0] == ["DOWNLOADING", 0] and log[-1] == ["STAGED", total]
    progress = [w for s, w in log[1:-1]]
    assert progress == list(range(4096, total, 4096))  # every window but the end
    assert (name, reports, same) == ("STAGED", ["STAGED"], True)


def test_a_reset_during_the_read_back_resumes_from_the_last_save() -> None:
    (got,) = run(DOWNLOAD + """
from mpota import slot

class PowerCut(Exception):
    pass

def cut(self, *args):
    raise PowerCut()

a = downloader("/cut.json")
check = slot.SlotWriter.check
slot.SlotWriter.check = cut  # the power goes during the final read-back
try:
    install_once(a)
except PowerCut:
    pass
before = [a.st.name, a.st.get("written")]
slot.SlotWriter.check = check
b = downloader("/cut.json", a.hw)  # the next boot: the same state file and flash
install_once(b)
result([before, b._client.firsts, b.st.name, b.link.reports[-1].get("detail"),
        bytes(b.hw.slots[1].data[:len(IMAGE)]) == IMAGE])
""")
    before, firsts, name, detail, same = got
    assert before == ["DOWNLOADING", 36864]  # the last save: the end was not saved
    assert firsts == [36864]  # one request, from the last saved whole block
    assert (name, detail, same) == ("STAGED", "resumed at byte 36864", True)


def test_a_fault_while_only_checking_is_retry_later_and_recorded_nowhere() -> None:
    (got,) = run("""
class Starved(Link):
    def check(self, agent, code):
        raise MemoryError("memory allocation failed, allocating 807 bytes")
a = agent(Starved())
confirmed = {"state": "CONFIRMED", "version_code": 2, "reason": None}
a.st.save(state=state.IDLE, target={"version_code": 2}, last_result=confirmed)
mpota._agent = a  # what mpota.poll() drives
out = mpota.poll()
result([out["result"], out["error"], a.st.get("last_result") == confirmed, a.link.reports])
""")
    assert got == ["RETRY_LATER", "resource", True, []]


def test_a_bad_move_ends_as_a_failed_result_never_raised() -> None:
    (got,) = run("""
a = agent()
mpota._agent = a
out = mpota.apply()  # nothing staged: refused before any move
bad = mpota._guard(lambda a: a.st.move("staged", written=1))  # IDLE cannot stage
result([out["error"], bad["result"], bad["error"], bad["reason"], a.st.name,
        a.st.get("written")])
""")
    assert got == ["state", "FAILED", "bad-move", "bad move: staged in IDLE", "IDLE", None]


def test_the_connection_is_parked_while_verifying_and_nothing_of_http_stays_after() -> None:
    (got,) = run("""
import sys

class Sock:
    closed = 0
    def close(self):
        Sock.closed += 1

a = agent()
c = a.client()  # a real mpota.http Client (no connection yet)
c.s, c.keep, c.where, c.left = Sock(), True, ("ota.example", 443, "/v1/update"), 0
sock = c.s
del c
a.park()  # the verifier's room: the connection stays, mpota.http goes
parked = ["mpota.http" in sys.modules, a._client is None]
c = a.client()  # back on the same connection, ready to carry the next request
back = [c.s is sock, c.keep, c.where, c.base, c.stall, c.hops, "mpota.http" in sys.modules]
del c
a.park()
a.close()  # a parked connection is closed too
closed_parked = [Sock.closed, a._parked]
a.client().s = Sock()
a.close()  # the client and mpota.http go back to the application
result([parked, back, closed_parked, [Sock.closed, a._client, "mpota.http" in sys.modules]])
""")
    parked, back, closed_parked, closed = got
    assert parked == [False, True]
    assert back == [True, True, ["ota.example", 443, "/v1/update"],
                    ["ota.example", 443, ""], 1, 3, True]
    assert closed_parked == [1, None]
    assert closed == [2, None, False]


def test_feed_needs_no_agent_only_the_watchdog_hw_armed() -> None:
    (got,) = run("""
class WDT:
    fed = 0
    def feed(self):
        WDT.fed += 1

mpota.feed()  # nothing armed: nothing to do
mpota._agent = None
mpota._hold[0] = WDT()  # what hw.watchdog() keeps
mpota.feed()
mpota.feed("timer")  # as machine.Timer calls it
result(WDT.fed)
""")
    assert got == 2
