# mpota: over-the-air updates for MicroPython on ESP32.
#
# In boot.py:   import mpota; mpota.boot()
# In main.py:   mpota.probation()        (after the application is up)
#               mpota.poll()             (now and then: checks, downloads, applies)
# At the REPL:  mpota.status(), mpota.check(), mpota.update(), mpota.apply(),
#               mpota.confirm(), mpota.rollback()
# In the application's loop, with watchdog_after_confirm "app":  mpota.feed()
#
# poll(), check(), update() and probation() bring the Wi-Fi station up with
# mpota.json's "wifi" when it is down (network "agent", the default) and
# leave it as they found it; network "app": the agent never touches it.
#
# The application can add health checks and say when it is busy:
#   @mpota.health_check
#   def sensor_ok(): return sensor.read() is not None
#   @mpota.busy_check
#   def busy(): return motor.running
#
# Each call loads the modules its phase needs and drops them after (drop()),
# so that between calls the application has the heap back.
__version__ = "0.1.0"

_agent = None
_checks = []
# the watchdog the agent armed, the Timer feeding it, the application's busy
# check, 1 while a call into the agent runs (blocking, or a round of mpota.run)
# (one list: each global of this module is heap for as long as it is loaded)
_hold = [None, None, None, 0]  # type: list


def health_check(fn):
    """Decorator: fn() -> bool must hold before a new image is confirmed."""
    _checks.append(fn)
    return fn


def busy_check(fn):
    """Decorator: while fn() returns True the agent never reboots."""
    _hold[2] = fn
    if _agent is not None:
        _agent.busy = fn
    return fn


def drop(*names):
    """Forget the mpota modules a phase loaded (sys.modules and this
    package's attributes) so their heap is free again.  Frozen into the
    firmware (__file__ is then the frozen name) their code costs no heap and
    they stay.  The GC scans the C stack conservatively: a step that just
    returned leaves pointers to its modules in dead stack slots, which would
    keep a dropped module alive; deep calls with cleared locals overwrite
    them first."""
    import gc
    import sys

    def scrub(n):
        a = b = c = d = e = f = g = h = i = j = k = m = None  # noqa: F841
        if n:
            scrub(n - 1)

    scrub(12)
    if __file__ != "mpota/__init__.py":
        for name in names:
            sys.modules.pop("mpota." + name, None)
            globals().pop(name, None)
    gc.collect()


def get_agent():
    global _agent
    if _agent is None:
        from mpota.hw import Hardware

        hw = Hardware()
        try:
            from mpota import config

            cfg = config.load(nvs=hw.nvs())  # the parsed dict stays, the parser goes
        finally:
            drop("config", "ca")
        from mpota.agent import Agent
        from mpota.state import State

        _agent = Agent(cfg, hw, State(), _checks, _hold[2])
    return _agent


def drive(gen, agent=None):
    """Run a step generator to its end and return its value: the blocking
    driver (mpota.aio.drive is the asyncio one).  A step yields None (a
    pause point: nothing to do here), an int (sleep that many ms) or
    (0 | 1, sock) (wait until sock is readable | writable: only a
    non-blocking socket asks; a wait longer than the download's stall_s is
    thrown into the step as OSError ETIMEDOUT, as a blocking socket's
    timeout would raise it)."""
    exc = None
    while True:
        try:
            want = gen.send(None) if exc is None else gen.throw(exc)
        except StopIteration as e:
            return e.value
        exc = None
        if want is None:
            continue
        if type(want) is int:
            import time

            time.sleep_ms(want)
            continue
        import select

        p = select.poll()
        p.register(want[1], select.POLLOUT if want[0] else select.POLLIN)
        stall = agent.cfg["download"]["stall_s"] if agent else 10
        if not p.poll(stall * 1000):
            import errno

            exc = OSError(errno.ETIMEDOUT)  # as a blocking socket's timeout


def _failed(e, agent):
    """The result of a call that raised e: printed and returned as
    {"result": "FAILED" (or "RETRY_LATER"), "error": its code, "reason"}.  An
    OTAError was recorded where it arose; any other exception is recorded
    here as a FAILED result and reported (best effort)."""
    from mpota.errors import OTAError

    if isinstance(e, OTAError):
        print("mpota: %s: %s" % (e.code, e))
        return {"result": "RETRY_LATER" if e.retryable else "FAILED", "error": e.code,
                "reason": str(e)}
    # a fault nobody foresaw: the application keeps running
    print("mpota: unexpected %s: %s" % (e.__class__.__name__, e))
    if agent is not None:
        try:
            agent.outcome("unexpected", e)
        except Exception as e2:  # the state file or flash itself fails: nothing left to do
            print("mpota: could not record the failure: %r" % e2)
    return {"result": "FAILED", "error": e.__class__.__name__, "reason": str(e)}


def _guard(fn, *args, uses=()):
    """fn(agent, *args), and nothing a server, a file or the network can cause
    escapes into the application (_failed).  fn may be "module.function":
    that mpota module is loaded for the call.  After the call the connection
    is closed and the modules named in uses are dropped.  One call at a time:
    while the asyncio agent is inside a round, a blocking call returns
    RETRY_LATER "in-progress" (status() answers)."""
    nested = _hold[3]
    if nested and fn != "repl.status":
        return {"result": "RETRY_LATER", "error": "in-progress",
                "reason": "another mpota call is running: try when it returns"}
    agent = None
    _hold[3] = 1
    if type(fn) is str:
        module, fn = fn.split(".")
        uses = (module, "health", "otadata", "repl", "policy", "wifi")
    try:
        if type(fn) is str:
            fn = getattr(__import__("mpota." + module, None, None, (fn,)), fn)
        agent = get_agent()
        return fn(agent, *args)
    except Exception as e:
        return _failed(e, agent)
    finally:
        if not nested:  # (a status() inside a round leaves the round's connection)
            _hold[3] = 0
            if agent is not None:
                agent.close()  # the TLS session's buffers go back to the application
        drop(*uses)


def boot():
    return _guard("health.on_boot")


def probation():
    return _guard("health.run")


def status():
    return _guard("repl.status")


def check():
    return _guard("repl.check")


def update(url_or_release=None):
    """Check (or take the release at a URL / an offer dict), download,
    verify, stage, and reboot when the policy allows."""
    return _guard(lambda a: drive(a.update(url_or_release), a), uses=("repl",))


def feed(_=None):
    """Feed the hardware watchdog the agent armed, if any.  With
    watchdog_after_confirm "app" the application calls this (or feeds its
    own machine.WDT) at least every app_watchdog_ms once an update is
    confirmed; with "agent" a machine.Timer calls it.  See docs/watchdog.md."""
    w = _hold[0]
    if w is not None:
        w.feed()


def apply(force=False):
    return _guard(lambda a: drive(a.apply(force), a))


def poll():
    return _guard(lambda a: drive(a.poll(), a), uses=("health", "otadata", "wifi"))


# The asyncio agent: the same steps as the blocking calls above, run as an
# asyncio task that lets the application's tasks run between blocks and
# inside every long computation (mpota.aio, loaded on first use; it also
# has poll(), update(url) and apply() as coroutines):
#   asyncio.create_task(mpota.run(every=3600))


def run(every=3600, jitter=0.1):
    from mpota import aio

    return aio.run(every, jitter)


def confirm():
    return _guard("repl.confirm")


def rollback():
    return _guard("repl.rollback")
