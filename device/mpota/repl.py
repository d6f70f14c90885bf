# The technician's REPL commands that are not part of the update path.
# Loaded for the call and dropped after (mpota._guard).
import mpota
from mpota.errors import BusyError, StateError

_PENDING_VERIFY = const(1)  # otadata.PENDING_VERIFY
_MAX_MANIFEST = const(4096)  # manifest.MAX_MANIFEST (not imported: it loads the verifier)


def status(agent):
    hw, st = agent.hw, agent.st
    running = agent.running_label()
    version, code = agent.installed(running)
    ota = hw.running_ota_state()
    from mpota.otadata import NAMES

    info = {
        "running": running,
        "version": version,
        "version_code": code,
        "ota_state": NAMES.get(ota, "-") if ota is not None else "-",
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


def check(agent):
    """Ask the server; the offer (dict) or None, printed."""
    offer = mpota.drive(agent.check(), agent)
    if offer is None:
        print("mpota: up to date")
        return None
    print("mpota: update available: %s (version_code %s)"
          % (offer.get("version"), offer.get("version_code")))
    return offer


def confirm(agent):
    """Confirm the running image now, skipping the health checks."""
    if agent.hw.running_ota_state() != _PENDING_VERIFY:
        print("mpota: the running image is not on probation; nothing to confirm")
        return None
    agent.hw.mark_valid()
    from mpota import health

    health.confirmed(agent, agent.st.get("target") or {})
    return "CONFIRMED"


def rollback(agent):
    """Boot the other slot's image, only when the agent knows it holds a
    verified image whose security counter is not below the floor."""
    if agent.busy is not None and agent.busy():
        raise BusyError("the application is busy: not rolling back now")
    if not agent.st.can("rollback"):
        raise StateError("an update is %s; the other slot holds no complete image"
                         % agent.st.name)
    other = agent.hw.next_slot()
    label = agent.hw.label(other)
    known = verified_image(agent, other)
    if known is None:
        raise StateError("%s holds no image this device verified (a download into it started "
                         "or failed since, or it was never written): not booting it; install "
                         "a release with mpota.update() instead" % label)
    counter = known.get("security_counter") or 0
    floor = agent.security_floor()
    if counter < floor:
        raise StateError("%s holds v%s with security counter %d, below this device's floor %d: "
                         "it may not boot again; install a newer release instead"
                         % (label, known.get("version"), counter, floor))
    try:
        other.set_boot()  # ESP-IDF checks the image format once more
    except OSError as e:
        raise StateError("the bootloader refused the image in %s (%s): not rolling back"
                         % (label, e))
    agent.st.move("rollback", target=None)
    mpota.drive(agent.report("ROLLBACK_REQUESTED", "technician asked to boot %s (v%s)"
                             % (label, known.get("version"))), agent)
    print("mpota: rebooting into %s (v%s)" % (label, known.get("version")))
    agent.hw.reset()
    return "REBOOTING"


def verified_image(agent, part):
    """What the agent knows the slot holds: {"version", "version_code",
    "security_counter"} of an image it verified against a signed manifest and
    confirmed, or of the image the board was flashed with while no download
    has touched its slot; None when it cannot vouch for the slot."""
    label = agent.hw.label(part)
    info = agent.st.get("installed", {}).get(label)
    if info:
        return info
    # A download into a slot removes it from "installed" and names it as the
    # target, which stays recorded after the download ends or fails.
    if label != _flashed_slot(part) or (agent.st.get("target") or {}).get("slot") == label:
        return None
    return {"version": agent.cfg["version"], "version_code": agent.cfg["version_code"],
            "security_counter": 0}


def _flashed_slot(part):
    """Where a freshly flashed board keeps its app: factory, else ota_0."""
    for subtype in (0x00, 0x10):
        found = part.find(0, subtype)  # esp32.Partition.find(TYPE_APP, subtype)
        if found:
            return found[0].info()[4]
    return None


def offer_from_url(agent, base):
    """Steps: an offer for a release directory served at base (manifest.json,
    manifest.sig, payload), e.g. a CDN or a technician's laptop; base may
    also be the URL of the release's manifest.json."""
    if base.endswith("/manifest.json"):
        base = base[:-len("manifest.json")]
    base = base.rstrip("/") + "/"
    c = agent.client()
    agent.lend_block(c)  # begin() takes it back
    parts = []
    for name, limit in (("manifest.json", _MAX_MANIFEST), ("manifest.sig", 64)):
        r = c.expect((yield from c.request("GET", base + name)), 200)
        parts.append((yield from r.read_all(limit)))
    return {"update": True, "raw_manifest": parts[0], "raw_signature": parts[1],
            "payload_url": base + "payload"}

