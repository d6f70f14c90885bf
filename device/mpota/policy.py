# When the agent may reboot into a staged image: a pure function of the
# policy, the application's busy flag and the clock (no I/O).
import time


def reason_not_to_reboot(policy, busy, staged_at, now, trusted_now):
    """None when a reboot is allowed, else why not.

    policy: the config's "policy" section (window already parsed to minutes);
    staged_at/now: time.time() values; trusted_now: now if the clock is
    trusted, else None."""
    if busy:
        return "the application is busy"
    if policy["reboot_delay_s"] and staged_at is not None:
        wait = staged_at + policy["reboot_delay_s"] - now
        if wait > 0:
            return "reboot deferred for %d s" % wait
    window = policy["window"]
    if window is not None:
        if trusted_now is None:
            return "outside the maintenance window (no trusted clock to check it)"
        t = time.gmtime(int(trusted_now))
        minute = t[3] * 60 + t[4]
        start, end = window
        inside = start <= minute < end if start <= end else minute >= start or minute < end
        if not inside:
            return "outside the maintenance window"
    return None
