# The asyncio agent: the blocking API's steps (mpota.drive) run by an
# asyncio driver, so the application's tasks keep running during an update.
# Loaded by mpota.run() (or `from mpota import aio`) and kept while it runs.
#
#   asyncio.create_task(mpota.run(every=3600))
#
# Where a step yields (mpota.drive's protocol) this driver lets the other
# tasks run: after every 4 KiB block written or read back, every slice of
# the P-256 verify and the ECDH, while a socket has nothing (its TLS
# handshake included: non-blocking, inside the request's first write).
# What no driver can cut short is one C call: a TLS handshake step (the
# certificate chain's verify), a flash sector's erase and program, a
# getaddrinfo() lookup, a state file's write.
#
# mpota.json "download": duty_pct (1..100, default 100): the share of the
# wall time the agent may work (after w ms of work it rests w*(100-p)/p ms);
# the busy check (@mpota.busy_check) is asked at every pause: while the
# application is busy the agent waits, up to download.busy_wait_s (default
# 60); then the round ends RETRY_LATER "busy" and the next one resumes the
# download where it was.
import asyncio
import errno
import io
import os
import select
import time

import mpota
from mpota.errors import BusyError

class Records(io.IOBase):
    """The TCP socket under a non-blocking TLS socket (mpota.http's nb): while
    the handshake runs, each read ends at a TLS record's end and the next
    one answers "nothing yet" once, so mbedTLS returns between handshake
    messages and the application's tasks run between its long steps (the
    certificate chain's verify, the ServerKeyExchange's, the key exchange)
    instead of after all three.  mpota.http sets pause to -1 once the
    handshake is done: from then on reads pass straight through.
    (Names here are ones the agent already uses: on a board each new name
    is heap.)"""

    def __init__(self, s):
        self.s = s
        self.left = 0  # bytes of the current record still to come
        self.pause = 0  # 1: say "nothing yet" once; -1: pass through

    def readinto(self, buf):
        n = self.pause
        if n < 0:
            return self.s.readinto(buf)
        if n:
            self.pause = 0
            return None
        left = self.left
        n = self.s.readinto(memoryview(buf)[:left] if left and left < len(buf) else buf)
        if n:
            if not left and n == 5:  # mbedTLS reads a record's 5-byte header first
                self.left = buf[3] << 8 | buf[4]
            elif left:
                self.left = max(left - n, 0)
                if not self.left:
                    self.pause = 1
        return n

    def write(self, buf):
        return self.s.write(buf)

    def setblocking(self, x):
        self.s.setblocking(x)

    def close(self):
        self.s.close()

    def ioctl(self, n, w):
        if n == 3:  # MP_STREAM_POLL: the TLS socket asks on its waiter's behalf
            if self.pause > 0:
                return w & select.POLLIN
            return _ready(self.s, w)
        if n == 4:  # MP_STREAM_CLOSE
            self.s.close()
            return 0
        return -1


def _ready(s, w):
    # the poll events of s among w, now (no wait)
    p = select.poll()
    p.register(s, w)
    p = p.poll(0)
    return p[0][1] if p else 0


def wait(s, w):
    # park this task until s is readable (w 0) or writable (1): the
    # scheduler's poller, what asyncio's own streams wait on (looked up each
    # time: a new event loop has a new one)
    q = asyncio.core._io_queue  # type: ignore[attr-defined]  # (not in the stubs)
    yield q.queue_write(s) if w else q.queue_read(s)


async def drive(gen, agent):
    """Run a step generator (see mpota.drive) as an asyncio task and return
    its value.  Cancelling the task closes the generator: its cleanup (the
    connection, the modules it loaded) runs as on any failure; the state on
    flash is where the last saved step left it (a download resumes)."""
    d = agent.cfg["download"]
    pct = d.get("duty_pct", 100)
    stall = d["stall_s"] * 1000
    exc = None
    t = time.ticks_ms()  # when the agent last let go (a rest, a wait, a sleep)
    try:
        while True:
            try:
                want = gen.send(None) if exc is None else gen.throw(exc)
            except StopIteration as e:
                return e.value
            exc = None
            if want is None:  # a pause point
                rest = 0
                if pct < 100:  # the duty cycle: rest in proportion to the work since t
                    work = time.ticks_diff(time.ticks_ms(), t)
                    if work >= 10:
                        rest = work * (100 - pct) // pct
                if rest or pct == 100:
                    await asyncio.sleep_ms(rest)
                    t = time.ticks_ms()
                else:
                    await asyncio.sleep_ms(0)  # (the work since t goes on counting)
                if agent.busy is not None and busy(agent.busy):  # (no task made per block)
                    exc = await pause(agent.busy, d["busy_wait_s"])
            elif type(want) is int:
                await asyncio.sleep_ms(want)
                t = time.ticks_ms()
            else:
                s, w = want[1], select.POLLOUT if want[0] else select.POLLIN
                if _ready(s, w):  # already (the next TLS record is in): no wait (asyncio's
                    # poller would wait for its next round: 1 ms on the unix port, a tick
                    # on an ESP32)
                    await asyncio.sleep_ms(0)
                else:
                    try:
                        await asyncio.wait_for_ms(wait(s, want[0]), stall)
                    except asyncio.TimeoutError:
                        exc = OSError(errno.ETIMEDOUT)  # as a blocking socket's timeout
                    t = time.ticks_ms()
    finally:
        gen.close()


def busy(fn):
    # the application's busy check; one that fails is not waited on
    try:
        return fn()
    except Exception as e:
        print("mpota: busy check failed: %s" % e)
        return False


async def pause(fn, limit):
    # the application is busy: wait while it stays so; after limit seconds,
    # the error that ends the round (the download is kept: the next round
    # resumes it); None once it is no longer busy
    t = time.ticks_ms()
    while busy(fn):
        if time.ticks_diff(time.ticks_ms(), t) > limit * 1000:
            err = BusyError("the application stayed busy for %d s: the download goes on at "
                            "the next round" % limit)
            err.retryable = True
            return err
        await asyncio.sleep_ms(100)
    return None


async def _guard(fn, uses):
    """fn(agent)'s steps driven here, with mpota's guard: the result dict,
    never an exception (a cancelled task is cancelled, cleaned up)."""
    if mpota._hold[3]:
        return mpota._guard(None)  # the "in-progress" answer
    agent = None
    mpota._hold[3] = 1
    try:
        agent = mpota.get_agent()
        agent.nb = Records  # its connections: non-blocking, the handshake in steps
        return await drive(fn(agent), agent)
    except Exception as e:
        return mpota._failed(e, agent)
    finally:
        mpota._hold[3] = 0
        if agent is not None:
            agent.close()
            agent.nb = False
        mpota.drop(*uses)


def poll():
    """await mpota.aio.poll(): one round, the result of mpota.poll()."""
    return _guard(lambda a: a.poll(), ("health", "otadata", "wifi"))


def update(url_or_release=None):
    """await mpota.aio.update(...): the result of mpota.update(...)."""
    return _guard(lambda a: a.update(url_or_release), ("repl",))


def apply(force=False):
    """await mpota.aio.apply(): the result of mpota.apply()."""
    return _guard(lambda a: a.apply(force), ())


async def run(every=3600, jitter=0.1):
    """Forever: a round of poll() (probation, then apply or check
    and update), then sleep every seconds (+- jitter of it, so a fleet does
    not ask at once); a round that should be tried again soon (RETRY_LATER,
    a busy application) sleeps less, backing off up to every."""
    back = 0
    while True:
        r = await poll()
        wait = every
        if (type(r) is dict and r.get("result") == "RETRY_LATER") or r == "WAITING":
            back = min(back * 2 or 30, every)
            wait = back
        else:
            back = 0
        r = None
        n = int.from_bytes(os.urandom(2), "little") % 1001
        await asyncio.sleep_ms(int(wait * 1000 * (1 - jitter + 2 * jitter * n / 1000)))
