# The technician's REPL commands that are not part of the update path.
from mpota import health, otadata, state
from mpota.errors import BusyError, StateError


def status(agent):
    hw, st = agent.hw, agent.st
    running = agent.running_label()
    version, code = agent.installed(running)
    ota = hw.running_ota_state()
    info = {
        "running": running,
        "version": version,
        "version_code": code,
        "ota_state": otadata.NAMES.get(ota, "-") if ota is not None else "-",
        "next_slot": hw.label(hw.next_slot()),
        "state": st.name,
        "written": st.get("written", 0),
        "target": (st.get("target") or {}).get("version"),
        "last_result": st.get("last_result"),
        "security_floor": agent.security_floor(),
        "free_heap": hw.free_heap(),
    }
    print("mpota: running %s v%s (code %s, %s); agent %s; next slot %s"
          % (running, version, code, info["ota_state"], st.name, info["next_slot"]))
    if info["target"]:
        print("mpota: target v%s, %d bytes written" % (info["target"], info["written"]))
    if info["last_result"]:
        last = info["last_result"]
        print("mpota: last result %s %s" % (last.get("state"), last.get("reason") or ""))
    return info


def poll(agent):
    """One step of background work: probation, resume, apply or check."""
    name = agent.st.name
    if name == state.PROBATION:
        return health.run(agent)
    if name == state.STAGED:
        try:
            agent.apply()
        except BusyError as e:
            print("mpota: %s" % e)
            return "WAITING"
        return "REBOOTING"
    offer = agent.check()
    if offer is None:
        return "UP_TO_DATE"
    return agent.run_update(offer)


def confirm(agent):
    """Confirm the running image now, skipping the health checks."""
    if agent.hw.running_ota_state() != otadata.PENDING_VERIFY:
        print("mpota: the running image is not on probation; nothing to confirm")
        return None
    agent.hw.mark_valid()
    health._confirmed(agent, agent.st.get("target") or {})
    return "CONFIRMED"


def rollback(agent):
    """Boot the other slot's image (it is checked by set_boot first)."""
    if agent.busy is not None and agent.busy():
        raise BusyError("the application is busy: not rolling back now")
    if agent.st.name in (state.DOWNLOADING, state.STAGED):
        raise StateError("an update is %s; the other slot holds no complete image"
                         % agent.st.name)
    other = agent.hw.next_slot()
    other.set_boot()  # OSError(-5379) if the other slot holds no valid image
    agent.st.save(state=state.IDLE, target=None)
    agent.report("ROLLBACK_REQUESTED", "technician asked to boot %s" % agent.hw.label(other))
    print("mpota: rebooting into %s" % agent.hw.label(other))
    agent.hw.reset()
    return "REBOOTING"


def offer_from_url(agent, base):
    """An offer for a release directory served at base (manifest.json,
    manifest.sig, payload), e.g. a CDN or a technician's laptop."""
    from mpota.manifest import MAX_MANIFEST

    base = base.rstrip("/") + "/"
    c = agent.client()
    parts = []
    for name, limit in (("manifest.json", MAX_MANIFEST), ("manifest.sig", 64)):
        r = c.expect(c.request("GET", base + name), 200)
        parts.append(r.read_all(limit))
    return {"update": True, "raw_manifest": parts[0], "raw_signature": parts[1],
            "payload_url": base + "payload"}
