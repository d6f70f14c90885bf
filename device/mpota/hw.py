# The one module that touches esp32, machine and network.  Everything else
# receives a Hardware object, so tests can hand in another one.
import gc

import esp32
import machine

import mpota


class Hardware:
    def __init__(self):
        self._found = None  # the station's active() before mpota.wifi brought it up

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
        # Held by mpota (with the Timer that feeds it), not by this object:
        # mpota.feed() needs nothing else resident.
        w = mpota._hold[0] = machine.WDT(0, timeout_ms)
        return w

    def keep_fed(self, period_ms):
        """Feed the watchdog every period_ms from machine.Timer(-1): a virtual
        timer (esp_timer) where the port has them, else hardware timer 3
        (1 on the C3; docs/watchdog.md).  The callback is mpota.feed."""
        t = mpota._hold[1]
        if t is None:
            t = mpota._hold[1] = machine.Timer(-1)
        t.init(period=period_ms, callback=mpota.feed)

    def feed(self):
        mpota.feed()

    def free_heap(self):
        gc.collect()
        return gc.mem_free()

    def nvs(self):
        return esp32.NVS("mpota")

    def network_up(self, wifi=None, timeout_ms=15000):
        """Steps (mpota.drive): None when the Wi-Fi station is connected,
        else why not (one line).  With wifi ({"ssid", "key"}) a station that
        is down is brought up and waited for, the watchdog fed (mpota.wifi:
        the caller drops it; mpota.wifi.restore puts the station back as it
        was found)."""
        import network

        if network.WLAN(network.STA_IF).isconnected():
            return None
        from mpota import wifi as w

        return (yield from w.up(self, wifi, timeout_ms))
