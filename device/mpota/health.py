# After a reboot into a new image: keep it only if it proves healthy.
#
# boot.py:  mpota.boot()       arms the watchdog when the image is on
#                              probation, notices a rollback and reports it,
#                              feeds a confirmed update's watchdog again
#                              after a soft reset (watchdog_after_confirm
#                              "agent")
# main.py:  mpota.probation()  runs the health checks, then confirms the
#                              image or resets so the bootloader rolls back
import mpota
from mpota import state

_PENDING_VERIFY = const(1)  # otadata.PENDING_VERIFY
_POWER_ON = const(1)  # machine.PWRON_RESET: a power cut is no fault of the new image
_SOFT_RESET = const(5)  # machine.SOFT_RESET: the watchdog, if armed, runs on
_REASONS = {
    1: "power lost before the new firmware confirmed itself",
    2: "the new firmware reset or crashed before confirming itself",
    3: "the watchdog fired before the new firmware confirmed itself (it hung)",
}


def classify(ota_state, name, target_slot, running, cause, failure):
    """What this boot means (pure): (verdict, reason, reject).  verdict:
    "probation" (the running image must prove itself), "confirmed" (it did,
    but power went before the bookkeeping was saved), "rolled-back" (the
    bootloader went back; reject: it was the firmware's fault) or None.
    ota_state: the running slot's otadata state; name: the agent's state;
    cause: machine.reset_cause(); failure: a failed health check's reason."""
    if ota_state == _PENDING_VERIFY:
        return "probation", None, False
    if name in (state.REBOOTING, state.PROBATION):
        if target_slot == running:
            return "confirmed", None, False
        reason = failure or _REASONS.get(cause, "the bootloader went back to the previous image")
        return "rolled-back", reason, bool(failure) or cause != _POWER_ON
    return None, None, False


def on_boot(agent):
    """Call early (boot.py).  Returns the state the agent is in."""
    hw, st = agent.hw, agent.st
    running = agent.running_label()
    target = st.get("target") or {}
    cause = hw.reset_cause()
    verdict, reason, reject = classify(hw.running_ota_state(), st.name, target.get("slot"),
                                       running, cause, st.get("probation_failure"))
    if verdict == "probation":
        hw.watchdog(agent.cfg["watchdog_ms"])
        st.move("probation")
        print("mpota: %s (%s) on probation; watchdog %d ms"
              % (running, target.get("version", "?"), agent.cfg["watchdog_ms"]))
    elif verdict == "confirmed":
        confirmed(agent, target)
    elif verdict == "rolled-back":
        code = target.get("version_code")
        st.move("rolled-back", code if reject else None, probation_failure=None, written=0,
                last_result={"state": "ROLLED_BACK", "reason": reason, "version_code": code})
        print("mpota: ROLLED_BACK from %s: %s" % (target.get("version", "?"), reason))
        mpota.drive(agent.report("ROLLED_BACK", reason, code), agent)
    elif cause == _SOFT_RESET and st.get("wdt"):
        # a soft reset stops the Timer that fed the watchdog a confirmed update
        # armed, and the application's objects, not the watchdog: arm it again
        after_confirm(agent)
    return st.name


def _source_reachable(agent, target):
    """None when the update source the device depends on answers over TLS
    with the pinned CA, else why not.  For an mpota server: its update API
    with this device's credentials.  For a release installed from its URL
    (any web server or CDN): that host answers, whatever the status."""
    source = target.get("source") or "server"
    try:
        if source.startswith("https://"):
            c = agent.client()
            try:
                mpota.drive(c.request("GET", source, {"Range": "bytes=0-0"}), agent)
            finally:
                c.close()
            return None
        if agent.cfg["server"] is None:
            return None  # pushed over serial, and no server: nothing to reach
        mpota.drive(agent.check(), agent)
        return None
    except Exception as e:  # any failure to reach the source is a failed check
        where = source if source.startswith("https://") else agent.cfg["server"]
        return "update source %s unreachable (%s)" % (where, e)


def _checks(agent, target):
    cfg = agent.cfg["health"]
    hw = agent.hw
    failures = []
    if cfg["network"]:
        try:
            # the agent brings Wi-Fi up if it manages it, else only looks at it
            why = mpota.drive(agent.online(cfg["timeout_s"] * 1000), agent) or \
                mpota.drive(hw.network_up())
            if why:
                failures.append("network is down (%s)" % why)
        except Exception as e:  # the network stack itself failed: the check failed
            failures.append("network check raised %s: %s" % (e.__class__.__name__, e))
    hw.feed()
    if cfg["server"] and not failures:
        why = _source_reachable(agent, target)
        if why:
            failures.append(why)
        hw.feed()
    free = hw.free_heap()
    if free < cfg["min_free_heap"]:
        failures.append("free heap %d below %d" % (free, cfg["min_free_heap"]))
    for check in agent.checks:
        try:
            ok = check()
        except Exception as e:  # an application check that raises has failed
            ok = False
            failures.append("%s raised %r" % (getattr(check, "__name__", "check"), e))
        else:
            if not ok:
                failures.append("%s failed" % getattr(check, "__name__", "check"))
        hw.feed()
    return failures


def run(agent):
    """Health-check an image on probation; confirm it or reset."""
    hw, st = agent.hw, agent.st
    if hw.running_ota_state() != _PENDING_VERIFY:
        return None  # nothing on probation
    target = st.get("target") or {}
    failures = _checks(agent, target)
    if failures:
        reason = "health check failed: " + "; ".join(failures)
        st.move("unhealthy", probation_failure=reason)
        print("mpota: %s; resetting so the bootloader rolls back" % reason)
        mpota.drive(agent.report("FAILED", reason, target.get("version_code")), agent)
        hw.reset()
        return "RESET"  # not reached on a board
    hw.mark_valid()
    confirmed(agent, target)
    return "CONFIRMED"


def confirmed(agent, target):
    """The running image is confirmed: raise the security floor, remember
    what the slot holds, report."""
    hw, st = agent.hw, agent.st
    if not st.can("confirmed"):  # refused before the floor is raised
        st.move("confirmed")  # raises StateError
    running = agent.running_label()
    counter = target.get("security_counter", 0)
    if counter > agent.security_floor():
        hw.nvs().set_i32("sec_floor", counter)
        hw.nvs().commit()
    installed = dict(st.get("installed", {}))
    if target.get("version_code") is not None:
        installed[running] = {"version": target["version"],
                              "version_code": target["version_code"],
                              "security_counter": counter}
    st.move("confirmed", installed=installed, written=0, probation_failure=None, wdt=True,
            last_result={"state": "CONFIRMED", "version_code": target.get("version_code"),
                         "reason": None})
    print("mpota: CONFIRMED %s in %s" % (target.get("version", "the running image"), running))
    mpota.drive(agent.report("CONFIRMED", None, target.get("version_code")), agent)
    after_confirm(agent)


def after_confirm(agent):
    """The watchdog probation armed cannot be stopped: re-armed with
    app_watchdog_ms, and fed by the agent from a machine.Timer
    (watchdog_after_confirm "agent") or by the application ("app":
    mpota.feed() or its own machine.WDT().feed()).  See docs/watchdog.md."""
    cfg, hw = agent.cfg, agent.hw
    ms = cfg["app_watchdog_ms"]
    hw.watchdog(ms)
    if cfg["watchdog_after_confirm"] == "agent":
        # the Timer's callback runs on the VM: docs/watchdog.md says what a
        # watchdog fed this way still catches
        hw.keep_fed(ms // 4)
