# The board's filesystem (MicroPython's "/", a host directory FLASH.sim/fs)
# with what LittleFS v2 -- the esp32 port's default -- guarantees across a
# power cut, no more and no less:
#   - a file's data is committed only by close() or flush() (lfs_file_sync);
#     until then a cut leaves the file as it was last committed: its old
#     content, or empty when this open created it;
#   - creating a file (open for writing a name that does not exist) is
#     committed at once, empty;
#   - rename (also over an existing file), remove, mkdir and rmdir are atomic.
# Each of these is a durable operation (simpower), so a cut can land on any
# of them: "fs-write" and "fs-close" give a torn file (the new bytes lost),
# "fs-rename" a complete file that was not renamed.
#
# install() replaces the builtin open() and, for device code, the os module
# (sys.modules["os"] = simos) before the firmware runs; device/mpota is not
# changed.  Opens for reading and paths outside the board's filesystem (the
# sim's own files) go straight to the unix port.  Uncommitted data is kept
# in FLASH.sim/fs-pending (not visible on the board), and replaces the file
# by a host rename at commit; a kill at any moment -- a cut, a watchdog, a
# reset -- leaves the last committed content.  A new boot discards whatever
# was pending, as LittleFS does when it mounts.
import builtins
import io
import os
import sys

import simpower
from simflash import die

_real_open = builtins.open
_real_rename = os.rename
_real_remove = os.remove
_root = None  # the board's filesystem, with a trailing "/"
_sim_dir = None
_pending = None
_seq = [0]
_EEXIST = const(17)
_ENOENT = const(2)
_CHUNK = const(512)


def install(sim_dir):
    global _root, _sim_dir, _pending
    _sim_dir = sim_dir
    _root = sim_dir + "/fs/"
    _pending = sim_dir + "/fs-pending"
    try:
        os.mkdir(_pending)
    except OSError:
        for name in os.listdir(_pending):  # what power took away at the last cut
            _real_remove(_pending + "/" + name)
    builtins.open = open_
    import simos

    sys.modules["os"] = simos


def _abs(path):
    if path[:1] == "/":
        return path
    cwd = os.getcwd()
    return cwd + path if cwd[-1:] == "/" else cwd + "/" + path


def on_board(path):
    """The absolute path of path when it is on the board's filesystem, else None."""
    if _root is None or not isinstance(path, str):
        return None
    path = _abs(path)
    return path if path.startswith(_root) else None


def _name(path):
    return path[len(_root):]


def _durable(kind, detail):
    if simpower.op(_sim_dir, kind, detail):
        die(_sim_dir, "power-cut %s %s" % (kind, detail))


def _exists(path):
    try:
        os.stat(path)
        return True
    except OSError:
        return False


def _copy(src, dst):
    buf = bytearray(_CHUNK)
    with _real_open(src, "rb") as a, _real_open(dst, "wb") as b:
        while True:
            n = a.readinto(buf)
            if not n:
                break
            b.write(memoryview(buf)[:n])


def open_(path, mode="r", *args, **kw):
    writing = "w" in mode or "a" in mode or "x" in mode or "+" in mode
    full = on_board(path) if writing else None
    if full is None:
        return _real_open(path, mode, *args, **kw)
    return File(full, mode)


class File(io.IOBase):
    """A file open for writing on LittleFS: writes go to a pending copy,
    close() and flush() commit it."""

    def __init__(self, path, mode):
        existed = _exists(path)
        if "x" in mode and existed:
            raise OSError(_EEXIST)
        if "r" in mode and not existed:
            raise OSError(_ENOENT)
        self.path = path
        self.binary = "b" in mode
        _seq[0] += 1
        self.pending = "%s/%d" % (_pending, _seq[0])
        _durable("fs-open", _name(path))
        if not existed:
            _real_open(path, "wb").close()  # LittleFS commits the new entry at once
        if "a" in mode or "r" in mode:
            _copy(path, self.pending)
            self.f = _real_open(self.pending, "r+b")
            if "a" in mode:
                self.f.seek(0, 2)
        else:
            self.f = _real_open(self.pending, "w+b")
        self.truncated = "w" in mode and existed  # a change until committed
        self.unsynced = False  # data written since the last commit
        self.closed = False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def write(self, data):
        if self.closed:
            raise OSError(9)  # EBADF
        if not self.unsynced:
            _durable("fs-write", _name(self.path))  # cut here: the new bytes are lost
            self.unsynced = True
        if isinstance(data, str):
            data = data.encode()
        return self.f.write(data)

    def readinto(self, buf):
        return self.f.readinto(buf)

    def read(self, n=-1):
        data = self.f.read(n) if n >= 0 else self.f.read()
        return data if self.binary else data.decode()

    def readline(self):
        data = self.f.readline()
        return data if self.binary else data.decode()

    def seek(self, offset, whence=0):
        return self.f.seek(offset, whence)

    def tell(self):
        return self.f.tell()

    def _commit(self, kind, last):
        if not (self.unsynced or self.truncated):
            return
        _durable(kind, _name(self.path))  # cut here: the file keeps its last commit
        self.f.flush()
        if last:
            self.f.close()
            _real_rename(self.pending, self.path)
        else:
            stage = self.pending + ".sync"
            _copy(self.pending, stage)
            _real_rename(stage, self.path)
        self.unsynced = self.truncated = False

    def flush(self):
        if not self.closed:
            self._commit("fs-sync", False)

    def close(self):
        if self.closed:
            return
        self.closed = True
        if self.unsynced or self.truncated:
            self._commit("fs-close", True)
        else:
            self.f.close()
            _real_remove(self.pending)

    def ioctl(self, req, arg):
        if req == 1:  # MP_STREAM_FLUSH
            self.flush()
            return 0
        if req == 4:  # MP_STREAM_CLOSE
            self.close()
            return 0
        return -22  # -MP_EINVAL


def _path_op(kind, fn, path, *more):
    full = on_board(path)
    if full is not None:
        _durable(kind, _name(full))
    return fn(path, *more)


def rename(old, new):
    a, b = on_board(old), on_board(new)
    if a is not None or b is not None:
        # cut here: the file is complete under its old name, not renamed
        _durable("fs-rename", "%s -> %s" % (_name(a) if a else old, _name(b) if b else new))
    _real_rename(old, new)


def remove(path):
    _path_op("fs-remove", _real_remove, path)


def mkdir(path):
    _path_op("fs-mkdir", os.mkdir, path)


def rmdir(path):
    _path_op("fs-rmdir", os.rmdir, path)
