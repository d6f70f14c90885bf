# Offline update over the serial REPL (mpota push): the host sends the signed
# release in chunks through the raw REPL and the same checks apply as for a
# network update: signature and device checks before anything is written,
# decryption and hashing while writing, read-back before set_boot.  A pulled
# cable loses nothing: begin() again resumes at what is on flash.
#
#   import mpota.push as P
#   P.begin(manifest_b64, signature_b64)  -> payload offset to send from
#   P.chunk(offset, data_b64)             -> payload bytes received so far
#   P.finish()                            -> "STAGED"; then mpota.apply()
#
# The host sends the payload from the offset begin() returns.  On a resume
# that is the last whole block on flash; for an encrypted release it is 16
# bytes earlier: the first chunk then starts with the ciphertext block before
# the resume point, which is CBC's IV there.
import binascii

import mpota
from mpota.errors import ImageError, OTAError, StateError

_SAVE_EVERY = const(16384)
_session = {}


def begin(manifest_b64, signature_b64):
    agent = mpota.get_agent()
    try:
        raw = binascii.a2b_base64(manifest_b64)
        sig = binascii.a2b_base64(signature_b64)
    except ValueError as e:
        raise StateError("the manifest or signature sent is not base64 (%s): send the "
                         "release directory's files unchanged" % e)
    from mpota import accept

    try:
        # refusals are recorded by begin
        part, target, key, written = mpota.drive(accept.begin(agent, raw, sig, "push:serial"),
                                                 agent)
    finally:
        mpota.drop("accept")
    _session.clear()
    from mpota import install

    writer = install.writer(agent, part, target, written, key)  # resumes at a whole block
    mpota.drop("install")
    _session.update(agent=agent, target=target, writer=writer, saved=writer.committed)
    print("mpota: receiving %s (%d bytes) at byte %d" % (target["version"],
                                                         target["payload_size"], writer.offset))
    return writer.offset - writer.iv_needed()


class _Bytes:
    def __init__(self, data):
        self.data = memoryview(data)
        self.pos = 0

    def readinto(self, mv):
        n = min(len(mv), len(self.data) - self.pos)
        mv[:n] = self.data[self.pos:self.pos + n]
        self.pos += n
        return n


def chunk(offset, data_b64):
    writer = _session.get("writer")
    if writer is None:
        raise StateError("no push in progress: call begin() first")
    pre = writer.iv_needed()  # 16 after an encrypted resume, until the IV came
    if offset != writer.offset - pre:
        raise StateError("chunk at %d, but the slot expects byte %d: resend from there"
                         % (offset, writer.offset - pre))
    try:
        data = memoryview(binascii.a2b_base64(data_b64))
    except ValueError as e:
        raise StateError("chunk at %d is not base64 (%s): resend it" % (offset, e))
    if pre:
        if len(data) < pre:
            raise StateError("the first chunk of an encrypted resume must hold the %d bytes "
                             "before byte %d (the CBC IV); got %d" % (pre, writer.offset,
                                                                     len(data)))
        writer.set_iv(data[:pre])
        data = data[pre:]
    try:
        mpota.drive(writer.pull(_Bytes(data), len(data)))
    except ImageError as e:  # not an app image, or more bytes than the manifest says
        _session["agent"].fail(e, "pushed image refused")
        _session.clear()
        raise
    if writer.committed - _session["saved"] >= _SAVE_EVERY:
        _session["agent"].st.move("progress", written=writer.committed)
        _session["saved"] = writer.committed
    return writer.offset


def finish():
    writer = _session.get("writer")
    if writer is None:
        raise StateError("no push in progress: call begin() first")
    agent, target = _session["agent"], _session["target"]
    try:
        mpota.drive(writer.check(target["sha256"], agent.hw.feed))
    except OTAError as e:
        agent.fail(e, "pushed image failed its check")
        _session.clear()
        raise
    from mpota import install

    mpota.drive(install.staged(agent, target), agent)
    _session.clear()
    mpota.drop("install", "slot")
    return "STAGED"


# A technician's session over serial (mpota trigger, and push's apply): the
# host follows the board by these events, never by sentences meant for people.
EVENT = "MPOTA-EVENT "  # the host's serial link (mpota_host.serial_link) waits for these


def event(name, **fields):
    """One machine-readable line for the host: MPOTA-EVENT {"event": name, ...}."""
    import json

    fields["event"] = name
    print(EVENT + json.dumps(fields))


def announce(agent):
    """For a technician's session over serial (mpota trigger / push): print an
    event before every reset the agent makes ("rebooting") and at every saved
    step of a download ("progress": bytes on flash, of total), so the host
    follows the update by events, never by sentences meant for people."""
    hw, st = agent.hw, agent.st
    reset, move = hw.reset, st.move

    def announced_reset():
        event("rebooting", version=(st.get("target") or {}).get("version"))
        reset()

    def announced_move(name, reject=None, **changes):
        move(name, reject, **changes)
        if name in ("begin", "progress", "staged"):
            target = st.get("target") or {}
            event("progress", written=st.get("written", 0),
                  total=target.get("payload_size", 0), version=target.get("version"))

    hw.reset = announced_reset
    st.move = announced_move


def trigger(url=None):
    """mpota trigger: mpota.update(url) with events; the result as an event."""
    import mpota

    try:
        announce(mpota.get_agent())
    except Exception:  # a broken mpota.json: update() below reports it as its result
        pass
    r = mpota.update(url)
    if type(r) is not dict:
        r = {"result": str(r)}
    event("result", **r)
    return r
