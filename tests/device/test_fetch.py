"""fetch.download on the unix port with a scripted fake HTTP client and the
real SlotWriter on a partition in RAM: one ranged request per connection, a
resume from the last whole block after a drop (with the CBC IV for an
encrypted release), progress every save interval, and every answer a server
may give instead."""

from __future__ import annotations

import hashlib
import os
from typing import Any

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from helpers import RAM_FAKES, unix_results

IMAGE = b"\xe9" + os.urandom(100_000 - 1)
KEY, IV = os.urandom(32), os.urandom(16)
_padded = IMAGE + b"\x00" * (-len(IMAGE) % 16)
_enc = Cipher(algorithms.AES(KEY), modes.CBC(IV)).encryptor()
CIPHERTEXT = _enc.update(_padded) + _enc.finalize()

SETUP = RAM_FAKES + """
import binascii
import mpota
from mpota import fetch, slot
from mpota.errors import OTAError, DownloadError, TransportError

class Answer:
    # one response: status, headers, body bytes; cut: a drop after that many
    def __init__(self, status, headers, body, length, cut):
        self.status, self.length = status, length
        self.range = headers.get("content-range")
        self.body, self.pos, self.cut = memoryview(body), 0, cut
    def url(self):
        return "https://h/p"
    def readinto(self, mv):
        end = len(self.body) if self.cut is None else self.cut
        if self.pos >= end:
            if self.cut is not None:
                raise TransportError("https://h/p broke: [Errno 110] ETIMEDOUT")
            return 0
        n = min(len(mv), end - self.pos)
        mv[:n] = self.body[self.pos:self.pos + n]
        self.pos += n
        return n

class Fake:
    # script(n, first_byte) -> (status, headers, body, length, cut) for the n-th request
    def __init__(self, script):
        self.script, self.ranges, self.closes = script, [], 0
    def request(self, method, url, headers):
        spec = headers["Range"]
        self.ranges.append(spec)
        first = int(spec[6:spec.index("-")])
        self.r = Answer(*self.script(len(self.ranges), first))
        return self.r
        yield  # a step generator, as mpota.http's
    def expect(self, r, *ok):
        if r.status in ok:
            return r
        if r.status >= 500:
            raise TransportError("HTTP %d (https://h/p)" % r.status, r.status)
        raise DownloadError("HTTP %d (https://h/p)" % r.status, r.status)
    def close(self):
        self.closes += 1

payload = binascii.unhexlify({payload!r})
image = binascii.unhexlify({image!r})
image_size = {image_size}
key = binascii.unhexlify({key!r}) if {key!r} else None
iv = binascii.unhexlify({iv!r}) if {iv!r} else None
SIZE = len(payload)

def ranged(first, cut=None):
    body = payload[first:]
    span = "bytes %d-%d/%d" % (first, SIZE - 1, SIZE)
    return 206, {{"content-range": span}}, body, len(body), cut

class Clock:
    # ticks_ms for fetch: step ms pass at each call
    def __init__(self, step):
        self.now, self.step = 0, step
    def __call__(self):
        self.now += self.step
        return self.now

def run(script, window=16384, retries=2, resume=0, step=5000, save_ms=None):
    part = Part(64)
    part.mem[:resume] = image[:resume]  # written before a reset
    buf = memoryview(bytearray(4096))
    w = slot.SlotWriter(part, image_size, buf, key, iv, SIZE)
    w.resume(resume)
    c = Fake(script)
    saved = []
    opts = {{"window": window, "retries": retries, "backoff_ms": 1, "backoff_max_ms": 4}}
    if save_ms is not None:
        opts["save_ms"] = save_ms
    feeds = []
    try:
        gen = fetch.download(c, "https://h/p", w, opts, saved.append,
                             lambda: feeds.append(w.offset), Clock(step))
        while True:  # mpota.drive without its sleeps (a retry's backoff is yielded)
            try:
                next(gen)
            except StopIteration:
                break
        mpota.drive(w.check({sha!r}))
        outcome = "ok"
    except OTAError as e:
        outcome = [type(e).__name__, e.retryable, str(e)]
    return {{"outcome": outcome, "ranges": c.ranges, "saved": saved, "closes": c.closes,
             "feeds": feeds}}
"""


def run(code: str, encrypted: bool = False) -> list[Any]:
    payload = CIPHERTEXT if encrypted else IMAGE
    setup = SETUP.format(payload=payload.hex(), image=IMAGE.hex(), image_size=len(IMAGE),
                         key=KEY.hex() if encrypted else "", iv=IV.hex() if encrypted else "",
                         sha=hashlib.sha256(IMAGE).hexdigest())
    return unix_results(setup + code)


def test_one_request_progress_every_window_and_the_connection_kept() -> None:
    (r,) = run("result(run(lambda n, first: ranged(first)))")
    assert r["outcome"] == "ok"
    assert r["ranges"] == ["bytes=0-"]
    assert r["saved"] == [16384, 32768, 49152, 65536, 81920, 98304, 100_000]
    assert r["closes"] == 0  # the client stays open for the next request


def test_progress_is_saved_by_bytes_and_by_time() -> None:
    (fast, every, slow, dropped) = run("""
# the clock moves 300 ms a window: a save needs a window AND 1000 ms
result(run(lambda n, first: ranged(first), step=300))
result(run(lambda n, first: ranged(first), step=300, save_ms=0))
# a slow link: every window, as before
result(run(lambda n, first: ranged(first), step=5000))
# time stands still: only before the retry (what arrived is kept) and at the end
result(run(lambda n, first: ranged(first, 50_000 - first if n == 1 else None), step=0))
""")
    assert fast["outcome"] == "ok" and fast["saved"] == [65536, 100_000]
    # the watchdog is fed in every window that is not saved
    assert fast["feeds"] == [16384, 32768, 49152, 81920, 98304]
    assert every["saved"] == [16384, 32768, 49152, 65536, 81920, 98304, 100_000]
    assert every["feeds"] == []
    assert slow["saved"] == every["saved"]
    assert dropped["outcome"] == "ok" and dropped["saved"] == [49152, 100_000]
    assert dropped["ranges"] == ["bytes=0-", "bytes=49152-"]


def test_a_drop_resumes_at_the_last_whole_block_with_one_request() -> None:
    (r, enc) = run("""
script = lambda n, first: ranged(first, 50_000 - first if n == 1 else None)
result(run(script))
result(run(script))
""")
    assert r["outcome"] == "ok"
    assert r["ranges"] == ["bytes=0-", "bytes=49152-"]
    assert r["saved"] == [16384, 32768, 49152, 65536, 81920, 98304, 100_000]
    assert r["closes"] == 1
    assert enc == r


def test_encrypted_resume_asks_for_the_iv_block_too() -> None:
    (dropped, static, resumed, static_resumed) = run("""
result(run(lambda n, first: ranged(first, 30_000 - first if n == 1 else None)))
# a server that ignores Range: the bytes before the resume point are skipped
whole = lambda n, first: (200, {}, payload, SIZE, 30_000 if n == 1 else None)
result(run(whole))
result(run(lambda n, first: ranged(first), resume=8192))
result(run(whole, resume=8192))
""", encrypted=True)
    # after a drop (no reset) the CBC state goes on from the last whole block
    assert dropped["outcome"] == "ok" and dropped["ranges"] == ["bytes=0-", "bytes=28672-"]
    assert static["outcome"] == "ok" and static["ranges"] == ["bytes=0-", "bytes=28672-"]
    # after a reset the block before the resume point is the IV
    assert resumed["outcome"] == "ok" and resumed["ranges"] == ["bytes=8176-"]
    assert static_resumed["outcome"] == "ok"
    assert static_resumed["ranges"] == ["bytes=8176-", "bytes=28672-"]


def test_capped_answers_continue_on_the_same_connection() -> None:
    (r,) = run("""
def capped(n, first):
    last = min(first + 29_999, SIZE - 1)
    return (206, {"content-range": "bytes %d-%d/%d" % (first, last, SIZE)},
            payload[first:last + 1], last - first + 1, None)
result(run(capped))
""")
    assert r["outcome"] == "ok"
    assert r["ranges"] == ["bytes=0-", "bytes=30000-", "bytes=60000-", "bytes=90000-"]
    assert r["closes"] == 0


def test_too_much_is_never_read() -> None:
    (r,) = run("""
result(run(lambda n, first: (200, {}, payload + b"junk" * 5000, None, None)))
""")
    assert r["outcome"] == "ok" and r["ranges"] == ["bytes=0-"]


def test_answers_that_disagree_are_refused_at_once() -> None:
    out = run("""
cr = lambda text, length=None: lambda n, first: (206, {"content-range": text}, payload,
                                                 length, None)
result(run(cr("bytes 0-99999/100001")))
result(run(cr("bytes 10-99999/100000")))
result(run(cr("bytes 0-99999/100000", 5)))
result(run(cr("bytes 0-100000/100000")))
result(run(cr("lines 0-1/100000")))
result(run(cr("")))
result(run(lambda n, first: (200, {}, payload, SIZE + 1, None)))
result(run(lambda n, first: (404, {}, b"", 0, None)))
""")
    for r in out:
        assert r["outcome"][:2] == ["DownloadError", False], r
        assert len(r["ranges"]) == 1, r
    texts = [r["outcome"][2] for r in out]
    assert texts[0] == ("https://h/p sent Content-Range 'bytes 0-99999/100001' "
                        "(Content-Length None) for bytes=0- of 100000")
    assert texts[4] == ("https://h/p sent Content-Range 'lines 0-1/100000' "
                        "(Content-Length None) for bytes=0- of 100000")
    assert texts[5] == ("https://h/p sent Content-Range '' (Content-Length None) for "
                        "bytes=0- of 100000")
    assert texts[6] == "server sends 100001 bytes, the manifest says 100000 (https://h/p)"
    assert texts[7] == "HTTP 404 (https://h/p)"


def test_stalls_and_5xx_are_retried_then_left_for_later() -> None:
    (stall, busy, recovers) = run("""
result(run(lambda n, first: ranged(first, 0)))
result(run(lambda n, first: (503, {}, b"", 0, None)))
result(run(lambda n, first: ranged(first, 4096) if n < 6 else ranged(first), retries=1))
""")
    assert stall["outcome"] == ["TransportError", True, "download failed 3 times in a row, "
                                "last: https://h/p broke: [Errno 110] ETIMEDOUT"]
    assert len(stall["ranges"]) == 3 and set(stall["ranges"]) == {"bytes=0-"}
    assert busy["outcome"][:2] == ["TransportError", True] and len(busy["ranges"]) == 3
    # a connection that got somewhere starts a new run of failures
    assert recovers["outcome"] == "ok"
    assert recovers["ranges"] == [f"bytes={4096 * i}-" for i in range(6)]
