# Rebooting into a staged image (agent.apply): loaded for the call and
# dropped after.
import time

import mpota
from mpota.errors import BusyError, ImageError, OTAError, StateError


def may_reboot(agent):
    """None when a reboot is allowed now, else (code, words): the policy's
    code ("busy", "deferred", "window", "no-clock") and a sentence."""
    from mpota import policy

    busy = agent.busy is not None and agent.busy()
    staged_at, now = agent.st.get("staged_at"), time.time()
    try:
        code = policy.decide(agent.cfg["policy"], busy, staged_at, now, agent.now())
        return None if code is None else (code, policy.explain(code, agent.cfg["policy"],
                                                                staged_at, now))
    finally:
        mpota.drop("policy")


def apply(agent, force=False):
    """Steps: reboot into the staged image when the policy allows it (force
    overrides all but a busy application)."""
    st = agent.st
    if not st.can("apply"):
        raise StateError("nothing staged (state %s)" % st.name)
    why = may_reboot(agent)
    if why is not None and not (force and why[0] != "busy"):
        raise BusyError("not rebooting: " + why[1])
    target = st.get("target")
    part = agent.hw.next_slot()
    label = agent.hw.label(part)
    if label != target["slot"]:
        raise StateError("staged image is in %s but the next slot is %s"
                         % (target["slot"], label))
    from mpota import slot

    try:
        # the image waited in flash: check it again, then let the bootloader have it
        try:
            yield from slot.check_slot(part, target["size"], target["sha256"], agent.block(),
                                       agent.hw.feed)
        finally:
            del slot
            mpota.drop("slot")
        try:
            part.set_boot()  # ESP-IDF validates the image once more
        except OSError as e:
            raise ImageError("bootloader refused the image in %s (%s): not an app for "
                             "chip_id %d" % (label, e, agent.cfg["chip_id"]))
    except OTAError as e:
        if e.code != "busy":  # (busy: the asyncio agent paused; the image stays staged)
            agent.fail(e, "staged image failed its final check")
        raise
    agent.free_block()
    st.move("apply")
    yield from agent.report("REBOOTING", None, target["version_code"])
    agent.close()
    print("mpota: rebooting into %s" % target["version"])
    agent.hw.reset()
