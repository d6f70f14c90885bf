# Simulated `network` of the esp32 port: one Wi-Fi station (every
# WLAN(STA_IF) object is the same interface, as in network_wlan.c), down
# after a hard reset and kept across a soft reset (the esp32 port's soft
# reboot does not touch the Wi-Fi driver).  Its state lives in
# FLASH.sim/wlan.json.
#
# The air around the board: FLASH.sim/air.json, {"aps": {"ssid": "key" or
# null}, "join_ms": N}.  Without it any SSID and key join.  connect() is
# asynchronous as on a board: the station joins join_ms later (default 0:
# at once); a missing AP or a wrong key is known after one scan (_SCAN_MS),
# and, as on the port, status() keeps reporting that reason until the next
# successful join, while the driver goes on retrying.  A firmware built with
# behaviour "health-fail" never finds an AP (its health check notices).
#
# Sockets to the server fail while the station is not connected: see the
# sim's socket.py, loaded here so its code is outside the device's heap.
import os
import time

import simboard

STA_IF = 0
AP_IF = 1
STAT_IDLE = 1000
STAT_CONNECTING = 1001
STAT_GOT_IP = 1010
STAT_BEACON_TIMEOUT = 200
STAT_NO_AP_FOUND = 201
STAT_WRONG_PASSWORD = 202
STAT_ASSOC_FAIL = 203
STAT_CONNECT_FAIL = 203
STAT_HANDSHAKE_TIMEOUT = 204
_ASSOC_LEAVE = 8  # WIFI_REASON_ASSOC_LEAVE: after disconnect(), status() is IDLE
_SCAN_MS = 300

_sta = None  # the station: shared by every WLAN(STA_IF)


def _now():
    return time.time_ns() // 1_000_000  # wall clock: the state outlives a process


def _path():
    return simboard.board().sim_dir + "/wlan.json"


def _station():
    # made when this module loads, before the device's heap budget is measured
    # out: the station's state is the driver's memory on a board, not the heap
    global _sta
    if _sta is None:
        if os.getenv("MPOTA_SIM_SOFT"):
            _sta = simboard.read_json(_path())
        if _sta is None:  # a hard reset: the radio starts off
            _sta = {"active": False, "connected": False, "requested": False, "reason": 0,
                    "due": 0, "ssid": None, "key": None}
            _save()
    return _sta


def _save():
    simboard.write_json(_path(), _sta)


def _air():
    return simboard.read_json(simboard.board().sim_dir + "/air.json", {})


def _join(st):
    """What trying st's SSID and key gives now: (status, delay_ms)."""
    fw = simboard.board().boot_facts().get("firmware") or {}
    air = _air()
    aps = air.get("aps")
    if fw.get("behaviour") == "health-fail":
        return STAT_NO_AP_FOUND, _SCAN_MS
    if aps is not None:
        if st["ssid"] not in aps:
            return STAT_NO_AP_FOUND, _SCAN_MS
        if aps[st["ssid"]] not in (None, st["key"]):
            return STAT_WRONG_PASSWORD, _SCAN_MS
    return STAT_GOT_IP, air.get("join_ms", 0)


def _settle():
    """Let the driver's pending join attempt finish if its time has come."""
    st = _station()
    if st["active"] and st["requested"] and not st["connected"] and _now() >= st["due"]:
        result, delay = _join(st)
        if result == STAT_GOT_IP:
            st["connected"] = True
            st["reason"] = 0
        else:  # the driver retries; the reason stays until a join succeeds
            st["reason"] = result
            st["due"] = _now() + delay
        _save()
    return st


def up():
    """True while the station is connected (for the sim's socket module)."""
    return _settle()["connected"]


class WLAN:
    def __init__(self, interface_id=STA_IF):
        if interface_id not in (STA_IF, AP_IF):
            raise ValueError("invalid WLAN interface identifier")
        self._if = interface_id
        self._ap_active = False

    def _sta_only(self):
        if self._if != STA_IF:
            raise OSError("STA required")

    def active(self, *state):
        if self._if == AP_IF:
            if state:
                self._ap_active = bool(state[0])
            return self._ap_active
        st = _station()
        if state:
            on = bool(state[0])
            if on != st["active"]:
                st["active"] = on
                if not on:  # esp_wifi_stop: the link goes, nothing rejoins by itself
                    st["connected"] = False
                    st["requested"] = False
                _save()
        return st["active"]

    def connect(self, ssid=None, key=None, **kwargs):
        self._sta_only()
        st = _station()
        if not st["active"]:
            raise OSError("Wifi Not Started")
        if ssid is not None:
            st["ssid"] = ssid
            st["key"] = key
        st["connected"] = False
        st["requested"] = True
        st["due"] = _now() + _join(st)[1]
        _save()
        _settle()

    def disconnect(self):
        self._sta_only()
        st = _station()
        if st["active"]:
            st["connected"] = False
            st["requested"] = False
            st["reason"] = _ASSOC_LEAVE
            _save()

    def isconnected(self):
        if self._if == AP_IF:
            return False
        return _settle()["connected"]

    def status(self, *args):
        if args:
            raise ValueError("unknown status param")
        if self._if == AP_IF:
            return None
        st = _settle()
        if st["connected"]:
            return STAT_GOT_IP
        if st["reason"] in (STAT_NO_AP_FOUND, STAT_WRONG_PASSWORD):
            return st["reason"]
        if st["reason"] == _ASSOC_LEAVE:
            return STAT_IDLE
        return STAT_CONNECTING if st["requested"] else STAT_IDLE

    def ifconfig(self, *args):
        if self.isconnected():
            return ("127.0.0.1", "255.0.0.0", "127.0.0.1", "127.0.0.1")
        return ("0.0.0.0", "0.0.0.0", "0.0.0.0", "0.0.0.0")

    def config(self, *args, **kwargs):
        if args == ("mac",):
            return bytes.fromhex(simboard.board().identity["mac"])
        if args == ("ssid",):
            return _station()["ssid"] or ""
        return None


if os.getenv("MPOTA_SIM_FLASH"):
    _station()
import socket  # noqa: E402,F401  (the sim's: before the heap budget is measured out)
