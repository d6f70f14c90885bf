# Bringing the Wi-Fi station up for a call into the agent, and leaving it
# as it was found after (mpota.json "network": "agent" with "wifi").  Loaded
# by hw.network_up / network_restore and dropped after.
import time

import network

_NO_AP = const(201)  # network.STAT_NO_AP_FOUND
_WRONG_KEY = const(202)  # network.STAT_WRONG_PASSWORD
# The esp32 port's status() keeps the last failure until a join succeeds: a
# failure is only believed once a scan has had time to fail again.
_BELIEVE_MS = const(4000)


def up(hw, wifi, timeout_ms):
    # steps: the station is polled every 100 ms (yielded: the asyncio agent
    # lets the application run meanwhile)
    wlan = network.WLAN(network.STA_IF)
    if wlan.isconnected():
        return None
    if not wifi:
        return "the Wi-Fi station is not connected"
    ssid = wifi["ssid"]
    try:
        if hw._found is None:
            hw._found = wlan.active()
        wlan.active(True)
        wlan.connect(ssid, wifi.get("key"))
        start = time.ticks_ms()
        while not wlan.isconnected():
            t = time.ticks_diff(time.ticks_ms(), start)
            status = wlan.status()
            if t > _BELIEVE_MS and status == _NO_AP:
                return "no AP %r found: check wifi.ssid and that the AP is in range" % ssid
            if t > _BELIEVE_MS and status == _WRONG_KEY:
                return "wrong key for %r: check wifi.key" % ssid
            if t > timeout_ms:
                return "no connection to %r after %d s (status %d)" % (
                    ssid, timeout_ms // 1000, status)
            hw.feed()
            yield 100
    except OSError as e:  # the Wi-Fi driver itself failed
        return "Wi-Fi driver error %s" % e
    return None


def restore(hw, keep):
    found = hw._found
    hw._found = None
    if keep:
        return
    wlan = network.WLAN(network.STA_IF)
    try:
        wlan.disconnect()
        wlan.active(found)
    except OSError as e:  # best effort: the next call starts from whatever is left
        print("mpota: Wi-Fi not restored: %s" % e)
