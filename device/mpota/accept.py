# Accepting a release (the verification phase of an install): the signed
# manifest and every device check before any byte is written, then the move
# "begin".  Loaded for the check and dropped before the download starts
# (mpota.install); the verifier's own modules come and go inside it.
import mpota
from mpota import state
from mpota.errors import BusyError, OTAError, StateError

_BLOCK = const(4096)


def _verify(agent, raw, sig, slot_size):
    """Steps: the verification phase: the manifest (signature first), the device
    facts and, if encrypted, the content key.  Returns (target, key):
    target is what the rest of the update needs (a dict, also the state's
    "target").  The verifier's modules are dropped after."""
    try:
        from mpota import verify

        _, code = agent.running_version()
        f, key = yield from verify.release(raw, sig, agent.cfg["trusted_pems"],
                                           (agent.cfg["board"], agent.cfg["chip_id"], code,
                                            agent.security_floor(), slot_size, agent.now()),
                                           agent.hw.nvs())
        enc = f.get("encryption")
        return {"version": f["version"], "version_code": f["version_code"],
                "security_counter": f["security_counter"], "sha256": f["sha256"],
                "size": f["size"], "payload_size": f["payload_size"],
                "iv": enc["iv"] if enc else None}, key
    finally:
        mpota.drop("verify", "syntax", "manifest", "keys", "p256", "ecies", "keywrap",
                   "enckey")


def begin(agent, raw, sig, url, claimed=None, source=None):
    """Steps: check a release before any byte of it is written, then move
    "begin" (no report: the server saw the offer).  Returns (slot,
    target, content key, bytes already written when the same release was
    interrupted).  claimed: the version_code the offer announced (a
    refusal is charged to it, not to a download in progress)."""
    if not agent.st.can("begin"):
        raise StateError("update already %s: apply or wait" % agent.st.name)
    part = agent.hw.next_slot()
    agent.block()  # before the verifier's modules come and go (fragmentation)
    agent.park()  # the connection stays open; mpota.http makes room for the verifier
    try:
        target, key = yield from _verify(agent, raw, sig, part.ioctl(4, 0) * part.ioctl(5, 0))
    except BusyError:
        raise  # the asyncio agent paused for a busy application: nothing was refused
    except Exception as e:  # whatever the release's bytes cause ends here
        err = e if isinstance(e, OTAError) else OTAError(
            "release unchecked: %s: %s" % (e.__class__.__name__, e))
        agent.fail(err, "release refused", claimed)
        raise err
    agent.unpark()  # mpota.http back before this release's state is saved
    old = agent.st.get("target") or {}
    written = 0
    if agent.st.name == state.DOWNLOADING and old.get("sha256") == target["sha256"]:
        written = agent.st.get("written", 0)
        if type(written) is not int or not 0 <= written <= target["payload_size"]:
            written = 0  # a state file from elsewhere
        written -= written % _BLOCK
    label = agent.hw.label(part)
    target.update(slot=label, url=url, source=source or url)
    if written:
        target["resumed_at"] = written  # told in the STAGED report
    installed = dict(agent.st.get("installed", {}))
    installed.pop(label, None)  # the old contents are going away
    agent.st.move("begin", written=written, target=target, installed=installed)
    return part, target, key, written
