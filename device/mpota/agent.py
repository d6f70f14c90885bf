# The update driver (ARCHITECTURE section 3), its progress persisted in State
# so that a reset anywhere resumes or recovers:
#
#   IDLE -> DOWNLOADING(written) -> STAGED -> REBOOTING -> PROBATION
#        -> CONFIRMED | ROLLED_BACK;  any failure -> FAILED(reason) -> IDLE
#
# The running image is never touched: everything is written to the next slot
# and verified before set_boot().  Each phase imports what it needs and drops
# it after (mpota.drop): the verifier only while verifying, fetch only while
# downloading; the TLS connection stays open from the check to the STAGED
# report (one handshake per update).
import binascii
import time

import mpota
from mpota import state
from mpota.errors import BusyError, DownloadError, OTAError, StateError

_BLOCK = const(4096)


class Agent:
    def __init__(self, cfg, hw, st, checks=(), busy=None, link=None):
        self.cfg = cfg
        self.hw = hw
        self.st = st
        self.checks = checks  # application health checks: callables -> bool
        self.busy = busy  # application busy check: callable -> bool
        self.link = link  # the server link (mpota.link, loaded per exchange; a fake in tests)
        self._client = None
        self._buf = None
        self._wanted = False

    def block(self):
        """The one 4096-byte block buffer, taken when an install or a check
        starts and kept until close()."""
        if self._buf is None:
            self._buf = memoryview(bytearray(_BLOCK))
        return self._buf

    def want_block(self):
        """An install may follow: the block buffer is taken now, while the
        heap is still in one piece.  A new TLS connection borrows its room
        (lend_block: the handshake's transient memory and the 4 KiB never
        need room at once) and spare() takes it back for an offer.  No
        4 KiB in one piece now (a poll that finds no update needs none): the
        offer's spare() tries again."""
        self._wanted = True
        try:
            self.block()
        except MemoryError:
            pass

    def lend_block(self, client):
        """Before a request on client: if it opens a new connection, free
        the block buffer for the TLS handshake (taken back by spare())."""
        if client.s is None:
            self._buf = None

    # facts about this device

    def client(self):
        if self._client is None:
            from mpota.http import Client

            d = self.cfg["download"]
            self._client = Client(self.cfg["server"], self.cfg["cas"], d["stall_s"],
                                  d["redirects"])
        return self._client

    def spare(self):
        """The block buffer if it is taken or wanted (free until the download
        starts), else None."""
        if self._wanted:
            self.block()
        return self._buf

    def free_block(self):
        self._buf = None

    def close(self):
        """End of a call into the agent: the connection and the block buffer
        go back to the application."""
        if self._client is not None:
            self._client.close()
        self._buf = None
        self._wanted = False

    def _link(self, fn, *args):
        link = self.link
        if link is None:
            from mpota import link
        try:
            return getattr(link, fn)(self, *args)
        finally:
            if self.link is None:
                mpota.drop("link")

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
            self._link("report", body)
        except Exception as e:  # best effort: never hides the failure being reported
            print("mpota: report %s not sent: %s" % (name, e))

    def reject(self, version_code, **changes):
        """Remember a release that failed here, so polling does not retry it
        (saved together with changes)."""
        if version_code is not None:
            rejected = [v for v in self.st.get("rejected", []) if v != version_code]
            changes["rejected"] = (rejected + [version_code])[-8:]
        if changes:
            self.st.save(**changes)

    def check(self, skip_rejected=True):
        """Ask the server for an update: the offer (dict) or None.  Releases
        that failed on this device before are skipped unless asked for."""
        _, code = self.running_version()
        offer = self._link("check", code)
        if not offer["update"]:
            return None
        if skip_rejected and offer.get("version_code") in self.st.get("rejected", []):
            print("mpota: %s failed here before; mpota.update() forces it"
                  % offer.get("version"))
            return None
        return offer

    # installing

    def install(self, offer, source="server"):
        """Verify the offer's manifest, download into the next slot and check
        it.  Leaves the agent STAGED (apply() selects the image for boot);
        returns the target (dict); raises an OTAError on failure.  The offer's
        manifest and signature are taken out of it.  source:
        "server" for an offer from the mpota server, else the release's URL."""
        claimed = offer.get("version_code")
        try:
            # taken out of the offer: their text is not kept through the download
            raw = offer.pop("raw_manifest", None) or binascii.a2b_base64(offer.pop("manifest"))
            sig = offer.pop("raw_signature", None) or binascii.a2b_base64(offer.pop("signature"))
        except (ValueError, TypeError, KeyError) as e:
            err = DownloadError("offer: manifest or signature not base64 (%s)" % e)
            self.fail(err, "release refused", claimed)
            raise err
        part, target, key, written = self.begin(raw, sig, offer["payload_url"], claimed,
                                                source)
        del raw, sig, offer
        try:
            self._download(part, target, written, key)
        except OTAError as e:
            if e.retryable:
                self.interrupted(e)  # resumed on the next poll
            else:
                self.fail(e, "download stopped")
            raise
        self.staged(target)
        mpota.drop("slot")
        return target

    def verify(self, raw, sig, slot_size):
        """The verification phase: the manifest (signature first), the device
        facts and, if encrypted, the content key.  Returns (target, key):
        target is what the rest of the update needs (a dict, also the state's
        "target").  The verifier's modules are dropped after."""
        try:
            from mpota import verify

            _, code = self.running_version()
            f, key = verify.release(raw, sig, self.cfg["trusted_pems"],
                                    (self.cfg["board"], self.cfg["chip_id"], code,
                                     self.security_floor(), slot_size, self.now()),
                                    self.hw.nvs())
            enc = f.get("encryption")
            return {"version": f["version"], "version_code": f["version_code"],
                    "security_counter": f["security_counter"], "sha256": f["sha256"],
                    "size": f["size"], "payload_size": f["payload_size"],
                    "iv": enc["iv"] if enc else None}, key
        finally:
            mpota.drop("verify", "syntax", "manifest", "keys", "p256", "ecies", "keywrap",
                       "enckey")

    def begin(self, raw, sig, url, claimed=None, source=None):
        """Check a release before any byte of it is written.  Records
        DOWNLOADING; returns (slot, target, content key, bytes already
        written when the same release was interrupted).  claimed: the
        version_code the offer announced (a refusal is charged to it, not to
        a download in progress)."""
        if self.st.name in (state.STAGED, state.REBOOTING, state.PROBATION):
            raise StateError("update already %s: apply or wait" % self.st.name)
        part = self.hw.next_slot()
        self.block()  # before the verifier's modules come and go (fragmentation)
        try:
            target, key = self.verify(raw, sig, part.ioctl(4, 0) * part.ioctl(5, 0))
        except Exception as e:  # whatever the release's bytes cause ends here
            err = e if isinstance(e, OTAError) else OTAError(
                "release unchecked: %s: %s" % (e.__class__.__name__, e))
            self.fail(err, "release refused", claimed)
            raise err
        old = self.st.get("target") or {}
        written = 0
        if self.st.name == state.DOWNLOADING and old.get("sha256") == target["sha256"]:
            written = self.st.get("written", 0)
            if type(written) is not int or not 0 <= written <= target["payload_size"]:
                written = 0  # a state file from elsewhere
            written -= written % _BLOCK
        label = self.hw.label(part)
        target.update(slot=label, url=url, source=source or url)
        installed = dict(self.st.get("installed", {}))
        installed.pop(label, None)  # the old contents are going away
        self.st.save(state=state.DOWNLOADING, written=written, target=target,
                     installed=installed)
        self.report("DOWNLOADING", "resuming at %d" % written if written else None,
                    target["version_code"])
        return part, target, key, written

    def writer(self, part, target, written, key):
        """A SlotWriter for the release, resumed at written."""
        from mpota.slot import SlotWriter

        iv = target.get("iv")
        writer = SlotWriter(part, target["size"], self.block(), key,
                            binascii.unhexlify(iv) if iv else None, target["payload_size"])
        if written:
            writer.resume(written, self.hw.feed)
        return writer

    def staged(self, target):
        self.st.save(state=state.STAGED, written=target["payload_size"], staged_at=time.time())
        self.report("STAGED", None, target["version_code"])
        print("mpota: %s staged in %s" % (target["version"], target["slot"]))

    def _download(self, part, target, written, key):
        writer = self.writer(part, target, written, key)
        total = target["payload_size"]
        shown = [written * 10 // total]

        def progress(committed):
            self.st.save(written=committed)
            self.hw.feed()
            tenth = committed * 10 // total
            if tenth > shown[0]:
                shown[0] = tenth
                print("mpota: downloaded %d%%" % (tenth * 10))

        from mpota import fetch

        try:
            fetch.download(self.client(), target["url"], writer, self.cfg["download"],
                           progress, feed=self.hw.feed)
        finally:
            mpota.drop("fetch")
        # the connection stays open: the STAGED report goes over it
        writer.check(target["sha256"], self.hw.feed)

    # failures: recorded by mpota.outcome, loaded when one happens

    def _outcome(self, fn, *args):
        from mpota import outcome

        try:
            getattr(outcome, fn)(self, *args)
        finally:
            mpota.drop("outcome")

    def fail(self, error, what, release="target"):
        """Record and report a failed update (see outcome.fail)."""
        self._outcome("fail", error, what, release)

    def interrupted(self, error):
        self._outcome("interrupted", error)

    def unexpected(self, error):
        self._outcome("unexpected", error)

    # applying

    def apply(self, force=False):
        """Reboot into the staged image when the policy allows it (force
        overrides all but a busy application)."""
        from mpota import reboot

        try:
            return reboot.apply(self, force)
        finally:
            mpota.drop("reboot", "policy", "slot")

    def poll(self):
        """One step of background work: probation, apply, or check and update."""
        name = self.st.name
        if name == state.PROBATION:
            from mpota import health

            return health.run(self)
        if name == state.STAGED:
            try:
                self.apply()
            except BusyError as e:
                print("mpota: %s" % e)
                return "WAITING"
            return "REBOOTING"
        self.want_block()  # before the check fragments the heap (see want_block)
        offer = self.check()
        if offer is None:
            return "UP_TO_DATE"
        return self.run_update(offer)

    def run_update(self, offer, source="server"):
        """install + apply as the policy says; returns a short result dict."""
        target = self.install(offer, source)
        if not self.cfg["policy"]["auto_apply"]:
            return {"result": "STAGED", "version": target["version"], "apply": "mpota.apply()"}
        try:
            self.apply()
        except BusyError as e:
            return {"result": "STAGED", "version": target["version"], "waiting": str(e)}
        return {"result": "REBOOTING", "version": target["version"]}

