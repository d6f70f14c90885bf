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
import os
import time

import mpota
from mpota.errors import BusyError

def _wait(sock, out):
    # park this task until sock is readable (out 0) or writable (1): the
    # scheduler's poller, what asyncio's own streams wait on (looked up each
    # time: a new event loop has a new one)
    io = asyncio.core._io_queue  # type: ignore[attr-defined]  # (not in the stubs)
    yield io.queue_write(sock) if out else io.queue_read(sock)


async def drive(gen, agent):
    """Run a step generator (see mpota.drive) as an asyncio task and return
    its value.  Cancelling the task closes the generator: its cleanup (the
    connection, the modules it loaded) runs as on any failure; the state on
    flash is where the last saved step left it (a download resumes)."""
    d = agent.cfg["download"]
    pct = d.get("duty_pct", 100)
    stall = d["stall_s"] * 1000
    exc = None
    debt = 0  # us of rest the duty cycle owes
    t = time.ticks_us()
    try:
        while True:
            try:
                want = gen.send(None) if exc is None else gen.throw(exc)
            except StopIteration as e:
                return e.value
            exc = None
            if want is None:  # a pause point
                if pct < 100:
                    debt += time.ticks_diff(time.ticks_us(), t) * (100 - pct) // pct
                if debt >= 1000:
                    t = time.ticks_us()
                    await asyncio.sleep_ms(debt // 1000)
                    debt -= time.ticks_diff(time.ticks_us(), t)  # what the rest really took
                else:
                    await asyncio.sleep_ms(0)
                busy = agent.busy
                if busy is not None and _busy(busy):
                    exc = await _pause(busy, d["busy_wait_s"])
            elif type(want) is int:
                await asyncio.sleep_ms(want)
            else:
                try:
                    await asyncio.wait_for_ms(_wait(want[1], want[0]), stall)
                except asyncio.TimeoutError:
                    exc = OSError(errno.ETIMEDOUT)  # as a blocking socket's timeout
            t = time.ticks_us()
    finally:
        gen.close()


async def _pause(busy, limit_s):
    # the application is busy: wait (None), or after limit_s the error that
    # ends the round (the download is kept: the next round resumes it)
    t = time.ticks_ms()
    while _busy(busy):
        if time.ticks_diff(time.ticks_ms(), t) > limit_s * 1000:
            e = BusyError("the application stayed busy for %d s: the download goes on at "
                          "the next round" % limit_s)
            e.retryable = True
            return e
        await asyncio.sleep_ms(100)
    return None


def _busy(fn):
    try:
        return fn()
    except Exception as e:  # the application's check failed: do not wait on it
        print("mpota: busy check failed: %s" % e)
        return False


async def guard(steps, uses):
    """steps(agent)'s generator driven here, with mpota's guard: the result
    dict, never an exception (a cancelled task is cancelled, cleaned up)."""
    if mpota._hold[3]:
        return mpota._guard(None)  # the "in-progress" answer
    agent = None
    mpota._hold[3] = 1
    try:
        agent = mpota.get_agent()
        agent.nb = True  # its connections: non-blocking sockets
        return await drive(steps(agent), agent)
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
    return guard(lambda a: a.poll(), ("health", "otadata", "wifi"))


def update(url_or_release=None):
    """await mpota.aio.update(...): the result of mpota.update(...)."""
    def steps(a):
        from mpota import repl

        return repl.update(a, url_or_release)

    return guard(steps, ("repl",))


def apply(force=False):
    """await mpota.aio.apply(): the result of mpota.apply()."""
    return guard(lambda a: a.apply(force), ())


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
