# ruff: noqa: UP031  (MicroPython: %-formatting)
# What a real board does with the work an update needs.  On a board (USB):
#
#   mpremote run bench/esp32_probe.py
#
# It prints one "PROBE key value" line per figure (and a JSON line at the
# end): P-256 verify time (the agent's mpota.p256, if installed), SHA-256 and
# AES-CBC throughput over 4 KiB blocks, the free heap before and after
# importing and starting the agent, and one update check with its TLS
# handshake and request timings when the agent is configured (mpota.json).
# A full update (check + download + stage, never rebooting) runs only when
# RUN_UPDATE below is set to True: it writes the next OTA slot and leaves
# the update STAGED (mpota.apply() or the next poll applies it).
#
# It also runs on the unix port (micropython bench/esp32_probe.py, with the
# compiled agent on MICROPYPATH); what is not there (esp32, a config) is
# reported as "n/a" and skipped.  See docs/benchmarks.md for how to read it
# next to the simulator's figures.
import gc
import json
import sys
import time

RUN_UPDATE = False
BLOCK = 4096
ROUNDS = 64  # 256 KiB per throughput figure
# a fixed P-256 test vector (public point, SHA-256 digest, r||s)
PUB = ("04471c3e758c4904285bba7e53118ed0f524adeb0757d25bd2f8e7b0d76dfa714c"
       "dd520f7aca8a8b917acc37f51de8f0c9bbe3ad858382e702dc25a12d09f7a858")
DIGEST = "09a8de6f6bdcb102aa369a02ffedf3f093bb8cc0b9db4514cdbaf45332544b7c"
SIG = ("4a1e4515804e59dd548b027df8e34df0c9cedab0d32dd52f683baef2c81dc4d5"
       "0b47d11d223ac2ee7971adfbebe801cfe460ac09be8b45719e1951dba502a7b8")

results = {}


def report(key, value, unit=""):
    results[key] = value
    if isinstance(value, float):
        value = "%.2f" % value
    print("PROBE %s %s%s" % (key, value, (" " + unit) if unit else ""))


def us():
    return time.ticks_us()


def since(t0):
    return time.ticks_diff(time.ticks_us(), t0)


def free():
    gc.collect()
    return gc.mem_free()


def platform():
    report("platform", sys.platform)
    report("micropython", ".".join(str(v) for v in sys.implementation.version))
    report("word_bits", 64 if sys.maxsize > 2 ** 32 else 32)
    try:
        import machine

        report("cpu_mhz", machine.freq() // 1000000)
    except (ImportError, AttributeError):
        report("cpu_mhz", "n/a")
    report("heap_free_start", free(), "bytes")


def throughput():
    import hashlib

    buf = bytearray(BLOCK)
    h = hashlib.sha256()
    t0 = us()
    for _ in range(ROUNDS):
        h.update(buf)
    h.digest()
    report("sha256_kib_s", ROUNDS * BLOCK / 1024 / (since(t0) / 1e6), "KiB/s")
    try:
        import cryptolib
    except ImportError:
        report("aes_cbc_kib_s", "n/a")
        return
    aes = cryptolib.aes(bytes(32), 2, bytes(16))
    out = bytearray(BLOCK)
    t0 = us()
    for _ in range(ROUNDS):
        aes.decrypt(buf, out)
    report("aes_cbc_decrypt_kib_s", ROUNDS * BLOCK / 1024 / (since(t0) / 1e6), "KiB/s")


def flash():
    try:
        import esp32
    except ImportError:
        report("flash_read_kib_s", "n/a")
        return
    part = esp32.Partition(esp32.Partition.RUNNING)
    buf = bytearray(BLOCK)
    t0 = us()
    for i in range(16):
        part.readblocks(i, buf)
    report("flash_read_kib_s", 16 * BLOCK / 1024 / (since(t0) / 1e6), "KiB/s")


def p256_verify():
    import binascii

    try:
        from mpota import p256
    except ImportError:
        report("p256_verify_ms", "n/a")
        return
    before = free()
    q = p256.decode_point(binascii.unhexlify(PUB))
    digest, sig = binascii.unhexlify(DIGEST), binascii.unhexlify(SIG)
    import mpota

    def verify():
        r = p256.verify(q, digest, sig)
        # a step generator since the asyncio agent (mpota.drive runs it); an
        # older mpota on the board returns the answer itself
        return r if type(r) is bool else mpota.drive(r)

    t0 = us()
    ok = verify()
    first = since(t0)
    t0 = us()
    ok = verify() and ok
    report("p256_verify_ms", since(t0) / 1000, "ms")
    report("p256_first_verify_ms", first / 1000, "ms")
    report("p256_verify_ok", bool(ok))
    report("p256_heap_kept", before - free(), "bytes")
    del sys.modules["mpota.p256"]


# network timing: the agent's TLS connections, counted and timed from outside
_net = {"handshakes": 0, "handshake_ms": 0.0, "requests": 0, "posts": 0, "writes": 0}
_events = []
_t0 = [0]


def _event(what):
    _events.append((since(_t0[0]) // 1000, what))


class _Sock:
    def __init__(self, s):
        self._s = s

    def write(self, data, *more):
        head = bytes(memoryview(data)[:5])
        if head[:4] in (b"GET ", b"POST"):
            _net["requests"] += 1
            _net["posts"] += head[:4] == b"POST"
            _event(bytes(memoryview(data)[:60]).split(b" ")[0].decode() + " " +
                   bytes(memoryview(data)[:60]).split(b" ")[1].decode().split("?")[0])
        _net["writes"] += 1
        return self._s.write(data, *more)

    def __getattr__(self, name):
        return getattr(self._s, name)


class _Ctx:
    def __init__(self, ctx):
        self._c = ctx

    @property
    def verify_mode(self):
        return self._c.verify_mode

    @verify_mode.setter
    def verify_mode(self, value):
        self._c.verify_mode = value

    def wrap_socket(self, sock, **kw):
        t0 = us()
        s = self._c.wrap_socket(sock, **kw)
        _net["handshakes"] += 1
        _net["handshake_ms"] += since(t0) / 1000
        _event("TLS handshake %d ms" % (since(t0) // 1000))
        return _Sock(s)

    def __getattr__(self, name):
        return getattr(self._c, name)


class _Tls:
    def __init__(self, real):
        self._m = real
        for name in dir(real):
            if name.isupper():
                setattr(self, name, getattr(real, name))

    def SSLContext(self, *args):
        return _Ctx(self._m.SSLContext(*args))

    def __getattr__(self, name):
        return getattr(self._m, name)


def agent():
    import tls

    sys.modules["tls"] = _Tls(tls)  # before the agent imports it: its connections are timed
    before = free()
    try:
        import mpota
    except ImportError:
        report("agent", "not installed")
        return None
    report("heap_after_import_mpota", before - free(), "bytes")
    try:
        a = mpota.get_agent()
    except Exception as e:  # not configured: no mpota.json, no CA...
        report("agent", "not configured (%s: %s)" % (e.__class__.__name__, e))
        return None
    report("heap_after_agent_start", before - free(), "bytes")
    report("heap_free_with_agent", free(), "bytes")
    return mpota, a


def update(mpota, a):
    _t0[0] = us()
    t0 = us()
    offer = mpota.check()
    report("check_ms", since(t0) / 1000, "ms")
    if not RUN_UPDATE:
        report("update", "skipped (set RUN_UPDATE = True to run one; it stages, never reboots)")
        return
    if offer is None:
        report("update", "n/a (up to date)")
        return
    cfg = getattr(a, "cfg", None)
    try:
        cfg["policy"]["auto_apply"] = False  # stage only: this probe never reboots the board
    except (TypeError, KeyError):
        report("update", "skipped: cannot turn auto_apply off in this agent")
        return
    _events[:] = []
    for k in _net:
        _net[k] = 0
    _t0[0] = us()
    t0 = us()
    result = mpota.update()
    report("update_ms", since(t0) / 1000, "ms")
    report("update_result", result.get("result") if isinstance(result, dict) else str(result))
    for k, v in _net.items():
        report("update_" + k, v)
    for t, what in _events:
        print("PROBE event %6d ms %s" % (t, what))


def main():
    platform()
    throughput()
    flash()
    p256_verify()
    found = agent()
    if found is not None:
        update(*found)
    print("PROBE_JSON " + json.dumps(results))


main()
