# A failed or interrupted update, recorded in the state, reported to the
# server and printed.  Loaded when a failure happens and dropped after.
import mpota
from mpota import state
from mpota.errors import DecryptionError, ImageError, ManifestError

# what puts a release on the rejected list: its signed bytes failed verification
_REJECT = (ManifestError, ImageError, DecryptionError)


def fail(agent, error, what, release="target"):
    """Record and report a failed update.  release: "target" for the
    in-progress target, else the version_code of the release that failed
    when it is not (or not known to be) the target, e.g. a refused new offer;
    the target's state and progress are then left alone.  Only a release
    whose signed bytes failed verification is put on the rejected list."""
    st = agent.st
    reason = "%s: %s" % (what, error)
    code = getattr(error, "code", "error")
    current = (st.get("target") or {}).get("version_code")
    ends = release == "target" or (release is not None and release == current)
    if release == "target":
        release = current
    last = {"state": "FAILED", "code": code, "reason": reason, "version_code": release}
    reject = release if isinstance(error, _REJECT) else None
    if ends:
        st.move("failed", reject, written=0, last_result=last)
    else:
        st.move("noted", reject, last_result=last)
    mpota.drive(agent.report("FAILED", "%s: %s" % (code, reason), release), agent)
    print("mpota: FAILED (%s) %s" % (code, reason))


def interrupted(agent, error):
    """A download that will resume on the next poll: keep DOWNLOADING and its
    progress, record why it stopped, tell the server."""
    st = agent.st
    code = (st.get("target") or {}).get("version_code")
    reason = "interrupted at byte %d, resumes on the next poll: %s" % (st.get("written", 0),
                                                                       error)
    kind = getattr(error, "code", "error")
    st.move("interrupted", last_result={"state": "INTERRUPTED", "code": kind,
                                        "reason": reason, "version_code": code})
    mpota.drive(agent.report("INTERRUPTED", "%s: %s" % (kind, reason), code), agent)
    print("mpota: download %s" % reason)


def unexpected(agent, error):
    """The last resort for an error that is not an OTAError: a download starts
    again cleanly; a staged or booting update keeps its state (the bootloader
    and probation still guard it).  Never rejects a release."""
    st = agent.st
    name = error.__class__.__name__
    if st.name in (state.IDLE, state.DOWNLOADING):
        fail(agent, error, "unexpected " + name)
        return
    code = (st.get("target") or {}).get("version_code")
    reason = "unexpected %s: %s" % (name, error)
    st.move("noted", last_result={"state": "FAILED", "code": "error", "reason": reason,
                                  "version_code": code})
    mpota.drive(agent.report("FAILED", "error: " + reason, code), agent)
    print("mpota: FAILED (error) %s; the update stays %s" % (reason, st.name))
