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
_busy = [None]
_wdt = [None, None]  # type: list  # the watchdog the agent armed, the Timer feeding it


def health_check(fn):
    """Decorator: fn() -> bool must hold before a new image is confirmed."""
    _checks.append(fn)
    return fn


def busy_check(fn):
    """Decorator: while fn() returns True the agent never reboots."""
    _busy[0] = fn
    if _agent is not None:
        _agent.busy = fn
    return fn


def _scrub(n):
    a = b = c = d = e = f = g = h = i = j = k = m = None  # noqa: F841
    if n:
        _scrub(n - 1)


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

    _scrub(12)
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

        _agent = Agent(cfg, hw, State(), _checks, _busy[0])
    return _agent


def _guard(fn, *args, uses=()):
    """fn(agent, *args), and nothing a server, a file or the network can cause
    escapes into the application: an error is printed and returned as
    {"result": "FAILED" (or "RETRY_LATER"), "error": its code, "reason"}.  An
    OTAError was recorded where it arose; any other exception is recorded
    here as a FAILED result and reported (best effort).  After the call the
    connection is closed and the modules named in uses are dropped."""
    from mpota.errors import OTAError

    agent = None
    try:
        agent = get_agent()
        return fn(agent, *args)
    except OTAError as e:
        print("mpota: %s: %s" % (e.code, e))
        return {"result": "RETRY_LATER" if e.retryable else "FAILED", "error": e.code,
                "reason": str(e)}
    except Exception as e:  # a fault nobody foresaw: the application keeps running
        name = e.__class__.__name__
        print("mpota: unexpected %s: %s" % (name, e))
        if agent is not None:
            try:
                agent.outcome("unexpected", e)
            except Exception as e2:  # the state file or flash itself fails: nothing left to do
                print("mpota: could not record the failure: %s: %s"
                      % (e2.__class__.__name__, e2))
        return {"result": "FAILED", "error": name, "reason": str(e)}
    finally:
        if agent is not None:
            agent.close()  # the TLS session's buffers go back to the application
        drop(*uses)


def _phase(module, fn, *args):
    """Call module.fn(agent, *args) guarded; the module is loaded for the call."""
    def run(a):
        m = __import__("mpota." + module, None, None, (fn,))
        return getattr(m, fn)(a, *args)

    return _guard(run, uses=(module, "health", "otadata", "repl", "policy", "wifi"))


def boot():
    return _phase("health", "on_boot")


def probation():
    return _phase("health", "run")


def status():
    return _phase("repl", "status")


def check():
    return _phase("repl", "check")


def update(url_or_release=None):
    """Check (or take the release at a URL / an offer dict), download,
    verify, stage, and reboot when the policy allows."""
    def run(a):
        a.want_block()  # the install's 4 KiB in one piece (Agent.want_block)
        offer = url_or_release
        source = "server"
        if offer is None:
            offer = a.check(skip_rejected=False)
            if offer is None:
                print("mpota: up to date")
                return {"result": "UP_TO_DATE"}
        elif isinstance(offer, str):
            from mpota import repl

            offer = repl.offer_from_url(a, offer)
            drop("repl")
            source = offer["payload_url"]  # probation checks that this host answers
        return a.run_update(offer, source)

    return _guard(run, uses=("repl",))


def feed(_=None):
    """Feed the hardware watchdog the agent armed, if any.  With
    watchdog_after_confirm "app" the application calls this (or feeds its
    own machine.WDT) at least every app_watchdog_ms once an update is
    confirmed; with "agent" a machine.Timer calls it.  See docs/watchdog.md."""
    w = _wdt[0]
    if w is not None:
        w.feed()


def apply(force=False):
    return _guard(lambda a: a.apply(force))


def poll():
    return _guard(lambda a: a.poll(), uses=("health", "otadata", "wifi"))


def confirm():
    return _phase("repl", "confirm")


def rollback():
    return _phase("repl", "rollback")
