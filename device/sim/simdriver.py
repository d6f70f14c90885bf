# MPOTA_SIM_DRIVER=asyncio: the application on the simulated board uses the
# asyncio agent.  The test suite runs its update, fault and power-cut tests
# once per driver: with this set, mpota.poll(), mpota.update() and
# mpota.apply() in a test's boot.py / main.py run as `await
# mpota.aio.poll()` (aio.update, aio.apply) in asyncio.run, beside an
# application task that ticks every 10 ms, and print what the application
# got while the agent worked:
#   mpota-sim: asyncio driver: <name> ran beside <n> application ticks, longest gap <ms> ms
# Installed by simboot and simrun after the heap is set up (the agent's
# heap budget pays for asyncio's tasks, as on a board).
import asyncio
import time

import mpota


def _via(name, steps):
    def call(*args):
        seen = [0, 0, time.ticks_ms()]  # ticks, longest gap, last tick

        async def app():
            while True:
                await asyncio.sleep_ms(10)
                now = time.ticks_ms()
                seen[1] = max(seen[1], time.ticks_diff(now, seen[2]))
                seen[0] += 1
                seen[2] = now

        async def main():
            t = asyncio.create_task(app())
            try:
                return await steps(*args)
            finally:
                t.cancel()

        try:
            return asyncio.run(main())
        finally:
            print("mpota-sim: asyncio driver: %s ran beside %d application ticks, longest gap "
                  "%d ms" % (name, seen[0], seen[1]))
            asyncio.new_event_loop()  # the next call starts from a clean scheduler

    return call


def install():
    from mpota import aio

    for name in ("poll", "update", "apply"):
        setattr(mpota, name, _via(name, getattr(aio, name)))
