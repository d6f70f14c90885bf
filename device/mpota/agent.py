# The update state machine (ARCHITECTURE section 3), persisted in State so
# that a reset anywhere resumes or recovers:
#
#   IDLE -> DOWNLOADING(written) -> STAGED -> REBOOTING -> PROBATION
#        -> CONFIRMED | ROLLED_BACK;  any failure -> FAILED(reason) -> IDLE
#
# The running image is never touched: everything is written to the next
# slot and verified before set_boot().
import binascii
import json
import time

from mpota import fetch, manifest, state
from mpota.errors import (
    BusyError,
    ConfigError,
    DecryptionError,
    DownloadError,
    ImageError,
    ManifestError,
    OTAError,
    StateError,
)
from mpota.http import Client
from mpota.keys import TrustedKeys
from mpota.slot import BLOCK, SlotWriter, check_slot, resume_point

_OFFER_LIMIT = const(12288)
_TARGET = object()  # fail(): the release that failed is the in-progress target
# what put a release on the rejected list: its signed bytes failed verification
_REJECT = (ManifestError, ImageError, DecryptionError)


class Agent:
    def __init__(self, cfg, hw, st, checks=(), busy=None):
        self.cfg = cfg
        self.hw = hw
        self.st = st
        self.checks = checks  # application health checks: callables -> bool
        self.busy = busy  # application busy check: callable -> bool
        self.keys = TrustedKeys(cfg["trusted_pems"])
        self._client = None
        # the one block buffer, taken while the heap is still in one piece
        self.buf = memoryview(bytearray(BLOCK))

    # facts about this device

    def client(self):
        if self._client is None:
            d = self.cfg["download"]
            self._client = Client(self.cfg["server"], self.cfg["cas"], d["stall_s"],
                                  d["redirects"])
        return self._client

    def auth(self):
        if self.cfg["server"] is None:
            raise ConfigError("no mpota server is configured (mpota.json has no 'server'): "
                              "install a release from its URL with mpota.update(URL)")
        return {"X-Device-Id": self.cfg["device_id"],
                "Authorization": "Bearer " + self.cfg["token"]}

    def running_label(self):
        return self.hw.label(self.hw.running())

    def installed(self, label):
        """(version, version_code) of the image the agent knows is in a slot."""
        info = self.st.get("installed", {}).get(label)
        if info:
            return info["version"], info["version_code"]
        return self.cfg["version"], self.cfg["version_code"]

    def running_version(self):
        """(version, version_code) of the running image; during probation the
        running image is the update being tried."""
        label = self.running_label()
        target = self.st.get("target") or {}
        if target.get("slot") == label and self.st.name in (state.REBOOTING, state.PROBATION):
            return target["version"], target["version_code"]
        return self.installed(label)

    def security_floor(self):
        try:
            return self.hw.nvs().get_i32("sec_floor")
        except OSError:
            return 0  # never raised yet

    def now(self):
        return time.time() if self.cfg["policy"]["clock_trusted"] else None

    def facts(self, slot_size):
        _, code = self.running_version()
        return manifest.Facts(self.cfg["board"], self.cfg["chip_id"], code,
                              self.security_floor(), slot_size, self.now())

    # talking to the server

    def report(self, name, detail=None, target=None):
        """Tell the server about a state change; best effort (skipped when no
        server is configured)."""
        if self.cfg["server"] is None:
            return
        version, code = self.running_version()
        body = {"state": name, "version": version, "version_code": code}
        if target is not None:
            body["target_version_code"] = target
        if detail:
            body["detail"] = detail[:500]
        try:
            c = self.client()
            r = c.request("POST", "/v1/report", dict(self.auth(), **{
                "Content-Type": "application/json"}), json.dumps(body).encode())
            c.expect(r, 200)
            r.read_all(1024)
        except Exception as e:  # best effort: never hides the failure being reported
            print("mpota: could not report %s to the server: %s" % (name, e))

    def reject(self, version_code):
        """Remember a release that failed here, so polling does not retry it."""
        if version_code is None:
            return
        rejected = [v for v in self.st.get("rejected", []) if v != version_code]
        self.st.save(rejected=(rejected + [version_code])[-8:])

    def check(self, skip_rejected=True):
        """Ask the server for an update: the offer (dict) or None.  Releases
        that failed on this device before are skipped unless asked for."""
        auth = self.auth()
        _, code = self.running_version()
        c = self.client()
        r = c.request("GET", "/v1/update?board=%s&version_code=%d" % (self.cfg["board"], code),
                      auth)
        c.expect(r, 200)
        try:
            offer = json.loads(r.read_all(_OFFER_LIMIT))
        except ValueError:
            raise DownloadError("the update check answer is not JSON")
        if type(offer) is not dict or type(offer.get("update")) is not bool:
            raise DownloadError("the update check answer has no 'update' flag")
        if not offer["update"]:
            return None
        if skip_rejected and offer.get("version_code") in self.st.get("rejected", []):
            print("mpota: %s failed here before; not retrying it (mpota.update() forces it)"
                  % offer.get("version"))
            return None
        for name, kind in (("manifest", str), ("signature", str), ("payload_url", str)):
            if type(offer.get(name)) is not kind:
                raise DownloadError("the update offer lacks %r" % name)
        return offer

    # installing

    def install(self, offer, source="server"):
        """Verify the offer's manifest, download into the next slot and check
        it.  Leaves the agent STAGED (the image is not yet selected for boot:
        apply() does that); raises an OTAError on failure.  source: "server"
        for an offer from the mpota server, else the release's URL."""
        claimed = offer.get("version_code")
        try:
            raw = offer.get("raw_manifest") or binascii.a2b_base64(offer["manifest"])
            sig = offer.get("raw_signature") or binascii.a2b_base64(offer["signature"])
        except (ValueError, TypeError) as e:
            err = DownloadError("the update offer's manifest or signature is not base64 (%s)"
                                % e)
            self.fail(err, "release refused", claimed)
            raise err
        target, m, key, written = self.begin(raw, sig, offer["payload_url"], claimed, source)
        try:
            self._download(target, m, written, key)
        except OTAError as e:
            if e.retryable:
                self.interrupted(e)  # resumed on the next poll
            else:
                self.fail(e, "download stopped")
            raise
        self.staged(m)
        return m

    def begin(self, raw, sig, url, claimed=None, source=None):
        """Check a release before any byte of it is written: the manifest
        (signature first) and, if encrypted, the content key.  Records
        DOWNLOADING; returns (slot, manifest, content key, bytes already
        written when the same release was interrupted).  claimed: the
        version_code the offer announced (a refusal is charged to it, not to
        a download in progress)."""
        if self.st.name in (state.STAGED, state.REBOOTING, state.PROBATION):
            raise StateError("an update is already %s; apply or wait for it" % self.st.name)
        target = self.hw.next_slot()
        slot_size = target.ioctl(4, 0) * target.ioctl(5, 0)
        try:
            m = manifest.check(raw, sig, self.keys, self.facts(slot_size))
            key = self.content_key(m)
        except Exception as e:  # whatever the release's bytes cause ends here
            err = e if isinstance(e, OTAError) else OTAError(
                "the release could not be checked (%s: %s)" % (e.__class__.__name__, e))
            self.fail(err, "release refused before anything was written", claimed)
            raise err
        resume = self.st.name == state.DOWNLOADING and \
            (self.st.get("target") or {}).get("sha256") == m.sha256
        written = resume_point(self.st.get("written", 0), m.payload_size) if resume else 0
        self.st.save(state=state.DOWNLOADING, written=written, target={
            "slot": self.hw.label(target), "version": m.version, "version_code": m.version_code,
            "security_counter": m.security_counter, "sha256": m.sha256, "size": m.size,
            "url": url, "source": source or url})
        installed = dict(self.st.get("installed", {}))
        installed.pop(self.hw.label(target), None)  # the old contents are going away
        self.st.save(installed=installed)
        self.report("DOWNLOADING", "resuming at %d" % written if written else None,
                    m.version_code)
        return target, m, key, written

    def writer(self, target, m, written, key):
        """A SlotWriter for the release, resumed at written."""
        enc = m.fields.get("encryption")
        iv = binascii.unhexlify(enc["iv"]) if enc else None
        writer = SlotWriter(target, m.size, self.buf, key, iv, m.payload_size)
        if written:
            writer.resume(written, self.hw.feed)
        return writer

    def staged(self, m):
        self.st.save(state=state.STAGED, written=m.payload_size, staged_at=time.time())
        self.report("STAGED", None, m.version_code)
        print("mpota: %s staged in %s" % (m.version, self.st.get("target")["slot"]))

    def content_key(self, m):
        """The content key of an encrypted release (None for a plain one)."""
        enc = m.fields.get("encryption")
        if enc is None:
            return None
        from mpota import ecies

        return ecies.content_key(enc, self.hw.nvs())

    def _download(self, target, m, written, key):
        writer = self.writer(target, m, written, key)

        shown = [written * 10 // m.payload_size]

        def progress(committed):
            self.st.save(written=committed)
            self.hw.feed()
            tenth = committed * 10 // m.payload_size
            if tenth > shown[0]:
                shown[0] = tenth
                print("mpota: downloaded %d%% (%d of %d bytes)"
                      % (tenth * 10, committed, m.payload_size))

        fetch.download(self.client(), self.st.get("target")["url"], writer,
                       self.cfg["download"], progress, feed=self.hw.feed)
        self.client().close()
        writer.check(m.sha256, self.hw.feed)

    def fail(self, error, what, release=_TARGET):
        """Record and report a failed update.  release: the version_code of
        the release that failed when it is not (or not known to be) the
        in-progress target, e.g. a refused new offer; the target's state and
        progress are then left alone.  Only a release whose signed bytes
        failed verification is put on the rejected list."""
        reason = "%s: %s" % (what, error)
        code = getattr(error, "code", "error")
        current = (self.st.get("target") or {}).get("version_code")
        ends = release is _TARGET or (release is not None and release == current)
        if release is _TARGET:
            release = current
        if isinstance(error, _REJECT):
            self.reject(release)
        result = {"state": "FAILED", "code": code, "reason": reason, "version_code": release}
        if ends:
            self.st.save(state=state.IDLE, written=0, last_result=result)
        else:
            self.st.save(last_result=result)
        self.report("FAILED", "%s: %s" % (code, reason), release)
        print("mpota: FAILED (%s) %s" % (code, reason))

    def interrupted(self, error):
        """A download that will resume on the next poll: keep DOWNLOADING and
        its progress, record why it stopped, tell the server."""
        target = self.st.get("target") or {}
        written = self.st.get("written", 0)
        reason = "download interrupted at byte %d, resumes on the next poll: %s" \
            % (written, error)
        code = getattr(error, "code", "error")
        self.st.save(last_result={"state": "INTERRUPTED", "code": code, "reason": reason,
                                  "version_code": target.get("version_code")})
        self.report("INTERRUPTED", "%s: %s" % (code, reason), target.get("version_code"))
        print("mpota: %s" % reason)

    def unexpected(self, error):
        """The last resort for an error that is not an OTAError: a download
        starts again cleanly; a staged or booting update keeps its state (the
        bootloader and probation still guard it).  Never rejects a release."""
        if self.st.name in (state.IDLE, state.DOWNLOADING):
            self.fail(error, "unexpected %s" % error.__class__.__name__)
            return
        target = (self.st.get("target") or {}).get("version_code")
        reason = "unexpected %s: %s" % (error.__class__.__name__, error)
        self.st.save(last_result={"state": "FAILED", "code": "error", "reason": reason,
                                  "version_code": target})
        self.report("FAILED", "error: " + reason, target)
        print("mpota: FAILED (error) %s; the update stays %s" % (reason, self.st.name))

    # applying

    def may_reboot(self):
        """None when a reboot is allowed now, else the reason it is not."""
        from mpota.policy import reason_not_to_reboot

        busy = self.busy is not None and self.busy()
        return reason_not_to_reboot(self.cfg["policy"], busy, self.st.get("staged_at"),
                                    time.time(), self.now())

    def apply(self, force=False):
        """Reboot into the staged image when the policy allows it."""
        if self.st.name != state.STAGED:
            raise StateError("nothing is staged (state %s)" % self.st.name)
        why = self.may_reboot()
        if why is not None and not (force and why != "the application is busy"):
            raise BusyError("not rebooting: " + why)
        target = self.st.get("target")
        slot = self.hw.next_slot()
        if self.hw.label(slot) != target["slot"]:
            raise StateError("the staged image is in %s but the next slot is %s"
                             % (target["slot"], self.hw.label(slot)))
        try:
            # the image waited in flash: check it again, then let the bootloader have it
            check_slot(slot, target["size"], target["sha256"], self.buf, self.hw.feed)
            try:
                slot.set_boot()  # ESP-IDF validates the image once more
            except OSError as e:
                raise ImageError(
                    "the bootloader refused the image in %s (%s): its ESP image header is not "
                    "valid for this chip (chip_id %d); publish firmware built for %s"
                    % (target["slot"], e, self.cfg["chip_id"], self.cfg["board"]))
        except OTAError as e:
            self.fail(e, "staged image failed its final check")
            raise
        self.st.save(state=state.REBOOTING)
        self.report("REBOOTING", None, target["version_code"])
        print("mpota: rebooting into %s" % target["version"])
        self.hw.reset()

    def run_update(self, offer, source="server"):
        """install + apply as the policy says; returns a short result dict."""
        m = self.install(offer, source)
        if not self.cfg["policy"]["auto_apply"]:
            return {"result": "STAGED", "version": m.version, "apply": "mpota.apply()"}
        try:
            self.apply()
        except BusyError as e:
            return {"result": "STAGED", "version": m.version, "waiting": str(e)}
        return {"result": "REBOOTING", "version": m.version}
