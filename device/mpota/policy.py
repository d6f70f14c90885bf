# When the agent may reboot into a staged image: a pure function of the
# policy, the application's busy flag and the clock (no I/O).  decide()
# returns a code the agent acts on; explain() the words for people.
import time


def decide(policy, busy, staged_at, now, trusted_now):
    """None when a reboot is allowed, else why not: "busy", "deferred",
    "no-clock" (a window is set but the clock is not trusted) or "window".

    policy: the config's "policy" section (window already parsed to minutes);
    staged_at/now: time.time() values; trusted_now: now if the clock is
    trusted, else None."""
    if busy:
        return "busy"
    delay = policy["reboot_delay_s"]
    if delay and staged_at is not None and staged_at + delay - now > 0:
        return "deferred"
    window = policy["window"]
    if window is not None:
        if trusted_now is None:
            return "no-clock"
        t = time.gmtime(int(trusted_now))
        minute = t[3] * 60 + t[4]
        start, end = window
        inside = start <= minute < end if start <= end else minute >= start or minute < end
        if not inside:
            return "window"
    return None


def explain(code, policy, staged_at, now):
    if code == "deferred":
        return "reboot deferred for %d s" % (staged_at + policy["reboot_delay_s"] - now)
    return {"busy": "the application is busy",
            "no-clock": "outside the maintenance window (no trusted clock to check it)",
            "window": "outside the maintenance window"}.get(code, code)
