# The download phase of an install, after the release passed its checks
# (agent.begin): the payload into the next slot, the read-back, STAGED.
# Loaded when the download starts (the verifier's modules are gone by then)
# and dropped after; mpota.push writes through writer() and ends with
# staged() too.
import binascii
import time

import mpota
from mpota.errors import OTAError


def writer(agent, part, target, written, key):
    """A SlotWriter for the release, resumed at written."""
    from mpota.slot import SlotWriter

    iv = target.get("iv")
    w = SlotWriter(part, target["size"], agent.block(), key,
                   binascii.unhexlify(iv) if iv else None, target["payload_size"])
    if written:
        w.resume(written, agent.hw.feed)
    return w


def staged(agent, target):
    """Steps: move "staged" and report it; a resume (after a reset or an
    interrupted download) is told in the report's detail."""
    agent.st.move("staged", written=target["payload_size"], staged_at=time.time())
    at = target.get("resumed_at")
    yield from agent.report("STAGED", "resumed at byte %d" % at if at else None,
                               target["version_code"])
    print("mpota: %s staged in %s" % (target["version"], target["slot"]))


def download(agent, part, target, written, key):
    """Steps: fill the slot from written on, read it back, move "staged".  A
    retryable failure is recorded as interrupted (resumed by the next
    poll), any other as failed; both are raised."""
    from mpota import fetch  # first: its code finds the heap in one piece

    st, feed = agent.st, agent.hw.feed
    try:
        w = writer(agent, part, target, written, key)
        total = target["payload_size"]
        shown = [written * 10 // total]

        def progress(committed):
            # the end is not saved: staged() saves after the read-back, and a
            # reset during the read-back resumes from the last save
            if committed < total:
                st.move("progress", written=committed)
            feed()
            tenth = committed * 10 // total
            if tenth > shown[0]:
                shown[0] = tenth
                print("mpota: downloaded %d%%" % (tenth * 10))

        try:
            yield from fetch.download(agent.client(), target["url"], w, agent.cfg["download"],
                                      progress, feed)
        finally:
            del fetch
            mpota.drop("fetch")
        # the connection stays open: the STAGED report goes over it
        yield from w.check(target["sha256"], feed)
    except OTAError as e:
        if e.retryable:
            agent.outcome("interrupted", e)  # resumed on the next poll
        else:
            agent.fail(e, "download stopped")
        raise
    yield from staged(agent, target)
