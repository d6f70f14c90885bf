# Offline update over the serial REPL (mpota push): the host sends the signed
# release in chunks through the raw REPL and the same checks apply as for a
# network update: signature and device checks before anything is written,
# decryption and hashing while writing, read-back before set_boot.  A pulled
# cable loses nothing: begin() again resumes at what is on flash.
#
#   import mpota.push as P
#   P.begin(manifest_b64, signature_b64)  -> bytes already written
#   P.chunk(offset, data_b64)             -> bytes written so far
#   P.finish()                            -> "STAGED"; then mpota.apply()
import binascii

import mpota
from mpota.errors import OTAError, StateError

_SAVE_EVERY = const(16384)
_session = {}


def begin(manifest_b64, signature_b64):
    agent = mpota.get_agent()
    raw = binascii.a2b_base64(manifest_b64)
    sig = binascii.a2b_base64(signature_b64)
    target, m, key, written = agent.begin(raw, sig, "push:serial")  # refusals recorded there
    _session.clear()
    _session.update(agent=agent, m=m, writer=agent.writer(target, m, written, key),
                    saved=written)
    print("mpota: receiving %s (%d bytes) at byte %d" % (m.version, m.payload_size, written))
    return written


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
    if offset != writer.offset:
        raise StateError("chunk at %d, but the slot is at %d: resend from there"
                         % (offset, writer.offset))
    data = binascii.a2b_base64(data_b64)
    writer.pull(_Bytes(data), len(data))
    if writer.committed - _session["saved"] >= _SAVE_EVERY:
        _session["agent"].st.save(written=writer.committed)
        _session["saved"] = writer.committed
    return writer.offset


def finish():
    writer = _session.get("writer")
    if writer is None:
        raise StateError("no push in progress: call begin() first")
    agent, m = _session["agent"], _session["m"]
    try:
        writer.check(m.sha256, agent.hw.feed)
    except OTAError as e:
        agent.fail(e, "pushed image failed its check")
        _session.clear()
        raise
    agent.staged(m)
    _session.clear()
    return "STAGED"
