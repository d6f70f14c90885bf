# Simulated `socket` of the esp32 port: the unix port's (it reaches the
# host's loopback), except while the Wi-Fi station is not connected (sim
# network.py): then a host name does not resolve -- getaddrinfo raises
# OSError(-202), lwIP's EAI_FAIL, as the port does -- and a connection to a
# numeric address fails with EHOSTUNREACH (118 in ESP-IDF's newlib).  A
# connection made while the station was up is not torn down when it goes;
# a socket made while it was down cannot carry TLS (the agent brings the
# station up before it makes one).
import sys

from micropython import const

_path = sys.path
sys.path = ()  # import the unix port's built-in socket, not this file
try:
    from socket import *  # noqa: F403
    import socket as _unix
finally:
    sys.path = _path
del _path

import network  # noqa: E402

_EAI_FAIL = const(-202)
_EHOSTUNREACH = const(118)


def _numeric(host):
    return all(c in "0123456789." for c in host)


def getaddrinfo(host, port, *args):
    if not network.up() and not _numeric(host):
        raise OSError(_EAI_FAIL)
    return _unix.getaddrinfo(host, port, *args)


class _Offline:
    # a socket made while the station is down: bind, listen and accept work
    # (the board's loopback), a connection to anywhere fails
    def __init__(self, args):
        self._s = _unix.socket(*args)

    def __getattr__(self, name):
        return getattr(self._s, name)

    def connect(self, addr):
        if not network.up():
            raise OSError(_EHOSTUNREACH, "EHOSTUNREACH")
        self._s.connect(addr)


def socket(*args):
    if network.up():
        return _unix.socket(*args)
    return _Offline(args)
