# mpota: over-the-air updates for MicroPython on ESP32.
#
# In boot.py:   import mpota; mpota.boot()
# In main.py:   mpota.probation()        (after the application is up)
#               mpota.poll()             (now and then: checks, downloads, applies)
# At the REPL:  mpota.status(), mpota.check(), mpota.update(), mpota.apply(),
#               mpota.confirm(), mpota.rollback()
#
# The application can add health checks and say when it is busy:
#   @mpota.health_check
#   def sensor_ok(): return sensor.read() is not None
#   @mpota.busy_check
#   def busy(): return motor.running
__version__ = "0.1.0"

_agent = None
_checks = []
_busy = [None]


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


def get_agent():
    global _agent
    if _agent is None:
        from mpota import config
        from mpota.agent import Agent
        from mpota.hw import Hardware
        from mpota.state import State

        hw = Hardware()
        _agent = Agent(config.load(nvs=hw.nvs()), hw, State(), _checks, _busy[0])
    return _agent


def _guard(fn, *args):
    from mpota.errors import OTAError

    try:
        return fn(*args)
    except OTAError as e:
        print("mpota: %s: %s" % (e.__class__.__name__, e))
        return {"result": "FAILED", "error": e.__class__.__name__, "reason": str(e)}


def boot():
    from mpota import health

    return _guard(health.on_boot, get_agent())


def probation():
    from mpota import health

    return _guard(health.run, get_agent())


def status():
    from mpota import repl

    return repl.status(get_agent())


def check():
    def run(a):
        offer = a.check()
        if offer is None:
            print("mpota: up to date")
            return None
        print("mpota: update available: %s (version_code %s)"
              % (offer.get("version"), offer.get("version_code")))
        return offer

    return _guard(run, get_agent())


def update(url_or_release=None):
    """Check (or take the release at a URL / an offer dict), download,
    verify, stage, and reboot when the policy allows."""
    def run(a):
        offer = url_or_release
        if offer is None:
            offer = a.check(skip_rejected=False)
            if offer is None:
                print("mpota: up to date")
                return {"result": "UP_TO_DATE"}
        elif isinstance(offer, str):
            from mpota import repl

            offer = repl.offer_from_url(a, offer)
        return a.run_update(offer)

    return _guard(run, get_agent())


def apply(force=False):
    return _guard(get_agent().apply, force)


def poll():
    from mpota import repl

    return _guard(repl.poll, get_agent())


def confirm():
    from mpota import repl

    return _guard(repl.confirm, get_agent())


def rollback():
    from mpota import repl

    return _guard(repl.rollback, get_agent())
