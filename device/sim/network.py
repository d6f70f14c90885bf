# Simulated `network` for the esp32 port: a station interface whose link
# follows the running firmware.  Sockets themselves are the unix port's and
# reach the host's loopback.  A firmware built with behaviour "health-fail"
# never gets a link, which is what its health check is meant to notice.
import time

import simboard

STA_IF = 0
AP_IF = 1
STAT_IDLE = 1000
STAT_CONNECTING = 1001
STAT_GOT_IP = 1010
STAT_NO_AP_FOUND = 201


def _link_works():
    fw = simboard.board().boot_facts().get("firmware") or {}
    return fw.get("behaviour") != "health-fail"


class WLAN:
    def __init__(self, interface_id=STA_IF):
        self._if = interface_id
        self._active = False
        self._status = STAT_IDLE

    def active(self, *state):
        if state:
            self._active = bool(state[0])
        return self._active

    def connect(self, ssid=None, key=None, **kwargs):
        if not self._active:
            raise OSError("STA must be active")
        self._status = STAT_CONNECTING
        time.sleep_ms(10)
        self._status = STAT_GOT_IP if _link_works() else STAT_NO_AP_FOUND

    def disconnect(self):
        self._status = STAT_IDLE

    def isconnected(self):
        return self._active and self._status == STAT_GOT_IP

    def status(self, *args):
        return self._status

    def ifconfig(self, *args):
        if self.isconnected():
            return ("127.0.0.1", "255.0.0.0", "127.0.0.1", "127.0.0.1")
        return ("0.0.0.0", "0.0.0.0", "0.0.0.0", "0.0.0.0")
