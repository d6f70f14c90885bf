# The one module that touches esp32, machine and network.  Everything else
# receives a Hardware object, so tests can hand in another one.
import gc
import time

import esp32
import machine

_GIVE_UP = (201, 202, 203)  # network.STAT_NO_AP_FOUND, _WRONG_PASSWORD, _ASSOC_FAIL


class Hardware:
    def __init__(self):
        self._wdt = None

    # partitions

    def running(self):
        return esp32.Partition(esp32.Partition.RUNNING)

    def next_slot(self):
        return self.running().get_next_update()

    def label(self, part):
        return part.info()[4]

    def slot_count(self):
        return len([p for p in esp32.Partition.find(esp32.Partition.TYPE_APP)
                    if 0x10 <= p.info()[1] <= 0x1F])

    def running_ota_state(self):
        """otadata state of the running slot (otadata.PENDING_VERIFY when on
        probation), or None when otadata does not name it."""
        parts = esp32.Partition.find(esp32.Partition.TYPE_DATA, 0x00)
        if not parts:
            return None
        from mpota import otadata  # dropped by the caller's phase (boot, REPL)

        entries = otadata.read_entries(parts[0])
        return otadata.running_state(entries, self.running().info()[1], self.slot_count())

    def mark_valid(self):
        esp32.Partition.mark_app_valid_cancel_rollback()

    # machine

    def reset(self):
        machine.reset()

    def reset_cause(self):
        return machine.reset_cause()

    def watchdog(self, timeout_ms):
        # The hardware WDT cannot be stopped; asking again reconfigures it.
        self._wdt = machine.WDT(0, timeout_ms)
        return self._wdt

    def feed(self):
        if self._wdt is not None:
            self._wdt.feed()

    def free_heap(self):
        gc.collect()
        return gc.mem_free()

    def nvs(self):
        return esp32.NVS("mpota")

    def network_up(self, wifi=None, timeout_ms=10000):
        import network

        wlan = network.WLAN(network.STA_IF)
        if wlan.isconnected():
            return True
        if not wifi:
            return False
        wlan.active(True)
        wlan.connect(wifi["ssid"], wifi.get("key"))
        start = time.ticks_ms()
        while not wlan.isconnected():
            elapsed = time.ticks_diff(time.ticks_ms(), start)
            # no AP, wrong password, association failed: give up after a grace second
            if elapsed > timeout_ms or (elapsed > 1000 and wlan.status() in _GIVE_UP):
                return False
            self.feed()
            time.sleep_ms(100)
        return True
