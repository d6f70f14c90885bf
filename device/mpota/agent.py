# The update driver (ARCHITECTURE section 3).  The states and the legal
# moves between them are mpota.state's; each phase is a module loaded when it
# starts and dropped after (mpota.drop): the verifier (begin), the download
# (mpota.install), apply (mpota.reboot), boot and probation (mpota.health),
# failures (mpota.outcome).  The running image is never touched: everything
# is written to the next slot and verified before set_boot().  The TLS
# connection stays open from the check to the STAGED report (one handshake).
import binascii
import time

import mpota
from mpota import state
from mpota.errors import BusyError, DownloadError, OTAError

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
        self._parked = None  # the connection while mpota.http is dropped (park())
        self._buf = None
        self._wanted = False
        self._net = None  # this call's network: "" usable, else why not (online())
        self.nb = False  # non-blocking sockets: the asyncio agent (mpota.aio) is driving

    def block(self):
        """The one 4096-byte block buffer, taken when an install or a check
        starts and kept until close()."""
        if self._buf is None:
            self._buf = memoryview(bytearray(_BLOCK))
        return self._buf

    def want_block(self):
        """An install may follow: the block buffer is taken now, while the
        heap is in one piece.  A new TLS connection borrows its room for the
        handshake (lend_block) and spare() takes it back for an offer (and
        tries again if there was no room now)."""
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

    def online(self, timeout_ms=0):
        """Steps: "" when the server may be reachable, else why not.  With
        network "agent" and wifi configured, a Wi-Fi station that is down is
        brought up (once per call into the agent; close() leaves it as it
        was found unless wifi.keep).  Otherwise the agent does not touch the
        network.  A call that starts with these steps waits for the station
        without holding the application (client() then knows the answer)."""
        why = self._net
        if why is None:
            wifi = self.cfg.get("wifi")  # (absent from a hand-made config: unmanaged)
            why = ""
            if wifi and self.cfg["network"] == "agent":
                try:
                    why = (yield from self.hw.network_up(
                        wifi, timeout_ms or wifi["timeout_s"] * 1000)) or ""
                finally:
                    mpota.drop("wifi")
            self._net = why
        return why

    def client(self):
        why = self._net
        if why is None:
            why = mpota.drive(self.online(), self)
        if why:
            err = OTAError(why, "wifi")  # the network may come back: try later
            err.retryable = True
            raise err
        if self._client is None:
            from mpota import http

            p = self._parked
            if p is not None:
                self._parked = None
                self._client = http.unpark(p)
            else:
                d = self.cfg["download"]
                self._client = http.Client(self.cfg["server"], self.cfg["cas"], d["stall_s"],
                                           d["redirects"], self.nb)
        return self._client

    def park(self):
        """Keep the open connection but let mpota.http go while the verifier
        runs (its room: ~6 KiB as .mpy); client() takes it up again."""
        c = self._client
        if c is not None and hasattr(c, "park"):  # (a test's fake client stays)
            self._client = None
            self._parked = c.park()
            del c
            mpota.drop("http")

    def unpark(self):
        """mpota.http back on the parked connection (park()), if any: done as
        soon as the verifier is gone, before the heap fills with the release's
        state, so the module finds room in one piece."""
        if self._parked is not None:
            self.client()

    def spare(self):
        """The block buffer if it is taken or wanted (free until the download
        starts), else None."""
        if self._wanted:
            self.block()
        return self._buf

    def free_block(self):
        self._buf = None

    def close(self):
        """End of a call into the agent: the connection, the HTTP client (and
        mpota.http) and the block buffer go back to the application, the
        Wi-Fi station is left as found."""
        c = self._client
        if c is not None:
            self._client = None
            c.close()
            del c
            mpota.drop("http")
        p = self._parked
        if p is not None:
            self._parked = None
            if p[0] is not None:
                try:
                    p[0].close()
                except OSError:
                    pass  # already broken: closing is best effort
        self._buf = None
        self._wanted = False
        self._net = None
        if getattr(self.hw, "_found", None) is not None:  # online() brought the station up
            from mpota import wifi

            try:
                wifi.restore(self.hw, self.cfg["wifi"]["keep"])
            finally:
                mpota.drop("wifi")

    def _link(self, fn, *args):
        # steps: link.fn(self, *args), mpota.link loaded for the exchange
        link = self.link
        if link is None:
            from mpota import link
        try:
            return (yield from getattr(link, fn)(self, *args))
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
        """Steps: tell the server about a state change; best effort (skipped
        when no server is configured).  Blocking: mpota.drive(agent.report(...))."""
        if self.cfg["server"] is None:
            return
        version, code = self.running_version()
        body = {"state": name, "version": version, "version_code": code}
        if target is not None:
            body["target_version_code"] = target
        if detail:
            body["detail"] = detail[:500]
        try:
            yield from self._link("report", body)
        except Exception as e:  # best effort: never hides the failure being reported
            print("mpota: report %s not sent: %s" % (name, e))

    def check(self, skip_rejected=True):
        """Steps: ask the server for an update: the offer (dict) or None.
        Releases that failed on this device before are skipped unless asked
        for."""
        _, code = self.running_version()
        try:
            offer = yield from self._link("check", code)
        except (MemoryError, OSError) as e:
            # only asking changed nothing: a transient fault means try later
            err = OTAError("update check: %s %s" % (e.__class__.__name__, e), "resource")
            err.retryable = True
            raise err
        if not offer["update"]:
            return None
        if skip_rejected and offer.get("version_code") in self.st.get("rejected", []):
            print("mpota: %s failed here before; mpota.update() forces it"
                  % offer.get("version"))
            return None
        return offer

    # installing

    # failures: recorded by mpota.outcome (fail, interrupted, unexpected),
    # loaded when one happens

    def outcome(self, fn, *args):
        from mpota import outcome

        try:
            getattr(outcome, fn)(self, *args)
        finally:
            mpota.drop("outcome")

    def fail(self, error, what, release="target"):
        """Record and report a failed update (see outcome.fail)."""
        self.outcome("fail", error, what, release)

    # applying

    def apply(self, force=False):
        """Steps: reboot into the staged image when the policy allows it
        (force overrides all but a busy application)."""
        from mpota import reboot

        try:
            return (yield from reboot.apply(self, force))
        finally:
            mpota.drop("reboot", "policy", "slot")

    def poll(self):
        """Steps of one round of background work: probation, apply, or check
        and update."""
        name = self.st.name
        if name == state.PROBATION:
            from mpota import health

            return health.run(self)
        if name == state.STAGED:
            try:
                yield from self.apply()
            except BusyError as e:
                print("mpota: %s" % e)
                return "WAITING"
            return "REBOOTING"
        return (yield from self.update(None, True))

    def update(self, offer=None, polled=False):
        """Steps of mpota.update() (and of poll()'s check): check (or take
        the release at a URL / an offer dict), download, verify, stage, and
        apply as the policy says.  polled: releases that failed here before
        are skipped, and "UP_TO_DATE" is the answer when none is offered."""
        self.want_block()  # before the check fragments the heap (see want_block)
        yield from self.online()  # (client() then knows the answer)
        source = "server"
        if offer is None:
            offer = yield from self.check(polled)
            if offer is None:
                if polled:
                    return "UP_TO_DATE"
                print("mpota: up to date")
                return {"result": "UP_TO_DATE"}
        elif isinstance(offer, str):
            from mpota import repl

            offer = yield from repl.offer_from_url(self, offer)
            mpota.drop("repl")  # not kept through the download
            source = offer["payload_url"]  # probation checks that this host answers
        return (yield from self.run_update(offer, source))

    def run_update(self, offer, source="server"):
        """Steps: verify the offer's manifest (taken out of the offer),
        download into the next slot and check it (STAGED), and apply as the
        policy says; returns a short result dict; raises an OTAError on
        failure.  source: "server" for an offer from the mpota server, else
        the release's URL."""
        claimed = offer.get("version_code")
        try:
            # taken out of the offer: their text is not kept through the download
            raw = offer.pop("raw_manifest", None) or binascii.a2b_base64(offer.pop("manifest"))
            sig = offer.pop("raw_signature", None) or binascii.a2b_base64(offer.pop("signature"))
        except (ValueError, TypeError, KeyError) as e:
            err = DownloadError("offer: manifest or signature not base64 (%s)" % e)
            self.fail(err, "release refused", claimed)
            raise err
        from mpota import accept  # the verification phase

        try:
            part, target, key, written = yield from accept.begin(
                self, raw, sig, offer["payload_url"], claimed, source)
        finally:
            mpota.drop("accept")
        del raw, sig, offer
        from mpota import install  # the download phase, the verifier gone

        try:
            yield from install.download(self, part, target, written, key)
        finally:
            mpota.drop("install", "slot")
        if not self.cfg["policy"]["auto_apply"]:
            return {"result": "STAGED", "version": target["version"], "apply": "mpota.apply()"}
        try:
            yield from self.apply()
        except BusyError as e:
            return {"result": "STAGED", "version": target["version"], "waiting": str(e)}
        return {"result": "REBOOTING", "version": target["version"]}

