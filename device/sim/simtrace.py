# Event counters and time spans for the benchmarks (bench/), on only when
# MPOTA_SIM_TRACE names a file: simrun installs them before any device code
# runs, and device/mpota is not changed.  What is wrapped:
#   tls        SSLContext.wrap_socket (one TLS handshake each) and the
#              socket it returns: every write and read is counted and timed,
#              a write that starts with an HTTP method is a request
#   hashlib    sha256 update/digest          cryptolib  aes encrypt/decrypt
#   gc         collect                       flash      erase, write, read
#   files      open, write, close, rename, remove (the board's filesystem)
# Time is kept per kind as [calls, microseconds, bytes].  Network time is kept
# per kind of request too (":check" GET /v1/update, ":report" POST, ":payload"
# any other GET), from the server's protocol, not from the agent's code.
#
# Each request, handshake, file open for writing, rename and remove, and the
# first flash read after flash writes ("readback") is an event, written with
# the running totals at that moment, so the host can tell how the time
# between any two events was spent.  start() and end(label) are
# called by the benchmark script; end() writes one JSON object:
#   {"events": [[t_us, kind, detail, last_read_us, totals], ...], "totals": {...}}
# Off (no MPOTA_SIM_TRACE), every function here does nothing.
import json
import sys
import time

import simflash

_ticks = time.ticks_us
_diff = time.ticks_diff
_path = None
_t0 = 0
_acc = {}
_events = []
_req = [""]  # kind of the request on the wire now: check, report, payload
_last_read = [0]
_METHODS = (b"GET ", b"POST", b"PUT ", b"HEAD", b"DELE", b"PATC")


def _add(kind, t, nbytes=0):
    dt = _diff(_ticks(), t)
    a = _acc.get(kind)
    if a is None:
        _acc[kind] = a = [0, 0, 0]
    a[0] += 1
    a[1] += dt
    a[2] += nbytes


def _snapshot():
    return {k: list(v) for k, v in _acc.items()}


def event(kind, detail=""):
    if _path is not None:
        _events.append([_diff(_ticks(), _t0), kind, detail, _last_read[0], _snapshot()])


def start():
    """The benchmark's t=0: totals and events so far are dropped."""
    global _t0
    if _path is None:
        return
    _acc.clear()
    del _events[:]
    _last_read[0] = 0
    _t0 = _ticks()
    event("start")


def end(label="end"):
    if _path is None:
        return
    event(label)
    f = _real_open(_path, "w")
    f.write('{"events": [')
    for i, e in enumerate(_events):
        f.write(("," if i else "") + json.dumps(e))
    f.write('], "totals": %s}' % json.dumps(_snapshot()))
    f.close()


def _kind_of(line):
    if line.startswith(b"POST"):
        return "report"
    if line.startswith(b"GET ") and b"/v1/update" in line.split(b" ", 2)[1]:
        return "check"
    return "payload"


class Sock:
    def __init__(self, s):
        self._s = s

    def write(self, data, *more):
        t = _ticks()
        head = bytes(memoryview(data)[:4])
        if head in _METHODS:
            line = bytes(memoryview(data)[:300]).split(b"\r\n", 1)[0]
            _req[0] = _kind_of(line)
            event("req", line.decode())
        n = self._s.write(data, *more)
        _add("net-write", t, len(data))
        _add("net-write:" + _req[0], t, len(data))
        return n

    def _read(self, t, n):
        _add("net-read", t, n or 0)
        _add("net-read:" + _req[0], t, n or 0)
        _last_read[0] = _diff(_ticks(), _t0)
        return n

    def readinto(self, buf, *more):
        t = _ticks()
        return self._read(t, self._s.readinto(buf, *more))

    def read(self, *more):
        t = _ticks()
        data = self._s.read(*more)
        self._read(t, len(data) if data else 0)
        return data

    def readline(self, *more):
        t = _ticks()
        data = self._s.readline(*more)
        self._read(t, len(data) if data else 0)
        return data

    def close(self):
        t = _ticks()
        self._s.close()
        _add("net-close", t)

    def __getattr__(self, name):
        return getattr(self._s, name)


class _Tls:
    def __init__(self, real):
        self._m = real
        for name in dir(real):
            if name.isupper():
                setattr(self, name, getattr(real, name))

    def SSLContext(self, *args):
        return Context(self._m.SSLContext(*args))

    def __getattr__(self, name):
        return getattr(self._m, name)


class Context:
    def __init__(self, ctx):
        self._c = ctx

    @property
    def verify_mode(self):
        return self._c.verify_mode

    @verify_mode.setter
    def verify_mode(self, value):
        self._c.verify_mode = value

    def load_verify_locations(self, *args, **kw):
        return self._c.load_verify_locations(*args, **kw)

    def load_cert_chain(self, *args, **kw):
        return self._c.load_cert_chain(*args, **kw)

    def set_ciphers(self, *args):
        return self._c.set_ciphers(*args)

    def get_ciphers(self):
        return self._c.get_ciphers()

    def wrap_socket(self, sock, **kw):
        t = _ticks()
        s = self._c.wrap_socket(sock, **kw)
        _add("tls-handshake", t)
        event("handshake", kw.get("server_hostname") or "")
        return Sock(s)


class _Hash:
    def __init__(self, h):
        self._h = h

    def update(self, data):
        t = _ticks()
        self._h.update(data)
        _add("sha256", t, len(data))

    def digest(self):
        t = _ticks()
        d = self._h.digest()
        _add("sha256", t)
        return d


class _Hashlib:
    def __init__(self, real):
        self._m = real

    def sha256(self, data=None):
        h = _Hash(self._m.sha256())
        if data is not None:
            h.update(data)
        return h

    def __getattr__(self, name):
        return getattr(self._m, name)


class _Aes:
    def __init__(self, a):
        self._a = a

    def encrypt(self, *args):
        t = _ticks()
        r = self._a.encrypt(*args)
        _add("aes", t, len(args[0]))
        return r

    def decrypt(self, *args):
        t = _ticks()
        r = self._a.decrypt(*args)
        _add("aes", t, len(args[0]))
        return r


class _Cryptolib:
    def __init__(self, real):
        self._m = real

    def aes(self, *args):
        return _Aes(self._m.aes(*args))

    def __getattr__(self, name):
        return getattr(self._m, name)


class _Gc:
    def __init__(self, real):
        self._m = real

    def collect(self):
        t = _ticks()
        r = self._m.collect()
        _add("gc", t)
        return r

    def __getattr__(self, name):
        return getattr(self._m, name)


def _timed(fn, kind, name_event=None):
    def wrapper(*args, **kw):
        t = _ticks()
        try:
            return fn(*args, **kw)
        finally:
            _add(kind, t)
            if name_event is not None:
                event(name_event, str(args[-1]).rsplit("/", 1)[-1])
    return wrapper


def _timed_method(cls, name, kind, size_arg=None):
    fn = getattr(cls, name)

    def wrapper(self, *args):
        t = _ticks()
        try:
            return fn(self, *args)
        finally:
            _add(kind, t, len(args[size_arg]) if size_arg is not None else 0)
    setattr(cls, name, wrapper)


_flash_last = [""]


def _flash_op(name, kind, size_arg):
    fn = getattr(simflash.Flash, name)
    op = name[0]  # e(rase), w(rite), r(ead)

    def wrapper(self, *args):
        if op == "r" and _flash_last[0] == "w":
            event("readback")  # the first flash read after writing: a read-back starts
        _flash_last[0] = op
        t = _ticks()
        try:
            return fn(self, *args)
        finally:
            _add(kind, t, len(args[size_arg]) if size_arg is not None else 0)
    setattr(simflash.Flash, name, wrapper)


def _open(path, mode="r", *args, **kw):
    t = _ticks()
    try:
        return _board_open(path, mode, *args, **kw)
    finally:
        _add("fs-open", t)
        if "w" in mode or "a" in mode or "x" in mode or "+" in mode:
            event("fs-open", str(path).rsplit("/", 1)[-1])


_real_open = open
_board_open = None


def install(path):
    """Wrap the modules above; path: where end() writes the trace."""
    global _path, _board_open, _real_open, _t0
    import builtins
    import cryptolib
    import gc
    import hashlib
    import tls

    import simfs
    import simos

    _path = path
    _t0 = _ticks()
    _real_open = simfs._real_open
    sys.modules["tls"] = _Tls(tls)
    sys.modules["hashlib"] = _Hashlib(hashlib)
    sys.modules["cryptolib"] = _Cryptolib(cryptolib)
    sys.modules["gc"] = _Gc(gc)
    _flash_op("erase", "flash-erase", None)
    _flash_op("write", "flash-write", 1)
    _flash_op("read", "flash-read", 1)
    _board_open = simfs.open_  # (builtins.open reads the original, not the override)
    builtins.open = _open
    _timed_method(simfs.File, "write", "fs-write", 0)
    _timed_method(simfs.File, "close", "fs-close")
    simos.rename = _timed(simfs.rename, "fs-rename", "fs-rename")
    simos.remove = _timed(simfs.remove, "fs-remove", "fs-remove")
