# ruff: noqa: UP031  (MicroPython: %-formatting)
# Run on the simulated board by bench/update_bench.py (one measurement per
# process, the agent installed in /lib as .mpy, its config in mpota.json):
#
#   onboard.py update                  mpota.update() (check + install; auto_apply off)
#   onboard.py bare HOST PORT PATH     a bare TLS GET of the payload into one 4 KiB buffer
#   onboard.py write SIZE              raw writeblocks of SIZE bytes into the next slot
#                                      (the detail: the longest single writeblocks, ms)
#   onboard.py floor HOST PORT PATH SIZE PUB DIGEST SIG [aes]
#       the secure floor: GET + SHA-256 + (AES-CBC) + write, read-back + SHA-256,
#       one P-256 verify
#   onboard.py impact MODE MS [slices]  an application task ticking every 10 ms
#       (await asyncio.sleep_ms(10)) beside: idle (nothing, for MS ms), async
#       (await mpota.aio.update()) or blocking (mpota.update()); prints every
#       tick's time and every block written and read back (see impact())
#
# On a board (mpremote run passes no arguments: set sys.argv, then import):
#   mpremote cp bench/onboard.py :onboard.py
#   mpremote exec "import sys; sys.argv = ['onboard.py', 'write', '262144']; import onboard"
# (write needs no server; impact and update need the agent installed and
# provisioned, bare/floor a reachable server; see docs/benchmarks.md).
#
# Each prints one line "BENCH <mode> <milliseconds> <detail>".  The board's
# filesystem holds ca.der (the server's CA).  Only the agent's public API
# (mpota.update) is used for the update; the floor borrows mpota.p256 for
# its one verify.
import binascii
import gc
import hashlib
import sys
import time

import esp32

try:
    import simtrace
except ImportError:  # on a board: no simulator tracing
    simtrace = None

BLOCK = 4096


def ms_since(t0):
    return time.ticks_diff(time.ticks_us(), t0) / 1000


def next_slot():
    return esp32.Partition(esp32.Partition.RUNNING).get_next_update()


def station_up():
    # The simulated station is down after a reset, as a board's: bring it up
    # the way an application does before it opens a socket.
    import time

    import network

    w = network.WLAN(network.STA_IF)
    if not w.isconnected():
        w.active(True)
        w.connect("sim", "sim-key")
        while not w.isconnected():
            time.sleep_ms(10)


def connect(host, port):
    station_up()
    import socket

    import tls

    ctx = tls.SSLContext(tls.PROTOCOL_TLS_CLIENT)
    ctx.verify_mode = tls.CERT_REQUIRED
    with open("ca.der", "rb") as f:
        ctx.load_verify_locations(f.read())
    s = socket.socket()
    s.setsockopt(6, 1, 1)  # TCP_NODELAY, as the agent's (else Nagle holds the handshake ~40 ms)
    s.connect(socket.getaddrinfo(host, port)[0][-1])
    return ctx.wrap_socket(s, server_hostname=host)


def get(host, port, path):
    """(socket, content length) after the response head of GET path."""
    s = connect(host, port)
    s.write(("GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n"
             % (path, host)).encode())
    length = 0
    while True:
        line = s.readline()
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
        if line in (b"\r\n", b""):
            break
    return s, length


def update():
    import mpota

    gc.collect()
    if simtrace:
        simtrace.start()
    t0 = time.ticks_us()
    result = mpota.update()
    ms = ms_since(t0)
    if simtrace:
        simtrace.end()
    ok = isinstance(result, dict) and result.get("result") == "STAGED"
    print("BENCH update %.1f %s" % (ms, "STAGED" if ok else "FAILED %r" % (result,)))


def bare(host, port, path):
    gc.collect()
    t0 = time.ticks_us()
    s, length = get(host, int(port), path)
    buf = bytearray(BLOCK)
    got = 0
    while got < length:
        n = s.readinto(buf)
        if not n:
            break
        got += n
    s.close()
    print("BENCH bare %.1f %d" % (ms_since(t0), got))


def write(size):
    part = next_slot()
    buf = bytearray(b"\xa5" * BLOCK)
    gc.collect()
    longest = 0  # us: one writeblocks (erase + program) is one C call on a board
    t0 = time.ticks_us()
    for block in range((size + BLOCK - 1) // BLOCK):
        t = time.ticks_us()
        part.writeblocks(block, buf)
        longest = max(longest, time.ticks_diff(time.ticks_us(), t))
    print("BENCH write %.1f %d %.2f" % (ms_since(t0), size, longest / 1000))


def floor(host, port, path, size, pub, digest, sig, aes=False):
    part = next_slot()
    buf = bytearray(BLOCK)
    mv = memoryview(buf)
    cipher = None
    if aes:
        import cryptolib

        cipher = cryptolib.aes(bytes(32), 2, bytes(16))
    verify = None
    try:
        from mpota import p256

        q = p256.decode_point(binascii.unhexlify(pub))
        d, sg = binascii.unhexlify(digest), binascii.unhexlify(sig)
        import mpota

        # a step generator (the asyncio agent slices it): mpota.drive runs it
        verify = (lambda q, d, s: mpota.drive(p256.verify(q, d, s)), q, d, sg)
    except Exception as e:  # the floor is then without its verify
        print("no P-256 verify in the floor: %s" % e)
    gc.collect()
    t0 = time.ticks_us()
    s, length = get(host, int(port), path)
    sha = hashlib.sha256()
    got = 0
    block = 0
    while got < length:
        fill = 0
        want = min(BLOCK, length - got)
        while fill < want:
            n = s.readinto(mv[fill:want])
            if not n:
                raise SystemExit("the server closed early")
            fill += n
        got += fill
        if cipher is not None and fill % 16 == 0:
            cipher.decrypt(mv[:fill], mv[:fill])
        sha.update(mv[:fill])
        if fill < BLOCK:
            for i in range(fill, BLOCK):
                buf[i] = 0xFF
        part.writeblocks(block, buf)
        block += 1
    s.close()
    sha.digest()
    check = hashlib.sha256()
    for i in range(block):
        part.readblocks(i, buf)
        check.update(mv[:min(BLOCK, length - i * BLOCK)])
    check.digest()
    if verify is not None and not verify[0](verify[1], verify[2], verify[3]):
        raise SystemExit("the floor's P-256 verify failed")
    print("BENCH floor %.1f %d%s" % (ms_since(t0), got, "" if verify else " no-verify"))


def impact(mode, ms, slices=False):
    """The application's view of an update: a task that ticks every 10 ms
    (await asyncio.sleep_ms(10)) beside mode: "idle" (nothing, ms ms),
    "async" (await mpota.aio.update(): the asyncio agent) or "blocking"
    (mpota.update() called from a task: no other task runs until it returns).
    Writes and read-backs of slot blocks are timestamped (the same thin
    wrapper in every mode) to tell what the agent did during the longest gap.
    With slices the asyncio driver's step generator is wrapped too: every
    resume is timed and the longest are printed with what the step yielded
    before and after (instrumentation: not in the timed runs).
    Prints "BENCH impact <update ms> <result>" then one "IMPACT {json}" line:
    tick and block times in us from the update's start, the window's end."""
    import asyncio
    import json
    from array import array

    import mpota

    # preallocated (growing lists would fragment the heap the agent needs):
    # us from base of every application tick; of every slot block written
    # (positive) and read back (negative); n[0] ticks, n[1] blocks
    base = time.ticks_us()
    ticks = array("l", bytes(8 * 2048))  # 20 s of ticks
    slots = next_slot().ioctl(4, 0)
    blocks = array("l", bytes(8 * (2 * slots + 64)))
    n = [0, 0]
    t0 = [base, 0]
    Part = esp32.Partition
    wb, rb = Part.writeblocks, Part.readblocks

    def mark(sign):
        if n[1] < len(blocks):
            blocks[n[1]] = sign * (time.ticks_diff(time.ticks_us(), t0[0]) + 1)
            n[1] += 1

    def writeblocks(self, k, buf, *more):
        wb(self, k, buf, *more)
        if len(buf) == BLOCK and not more:  # whole blocks: the slot's (the first erases)
            mark(1)

    def readblocks(self, k, buf, *more):
        rb(self, k, buf, *more)
        if len(buf) == BLOCK and not more:
            mark(-1)

    Part.writeblocks, Part.readblocks = writeblocks, readblocks
    resumes = []  # (duration us, start us, yielded before, yielded after, blocks so far)
    if slices:
        from mpota import aio

        real = aio.drive

        def kind(w):
            if w is None:
                return "pause"
            if type(w) is int:
                return "sleep %d ms" % w
            return "wait until %s" % ("writable" if w[0] else "readable")

        def timed(gen):
            # every resume of gen timed; sends, throws and close passed through
            before, exc = "start", None
            while True:
                t = time.ticks_us()
                try:
                    want = gen.send(None) if exc is None else gen.throw(exc)
                except StopIteration as e:
                    return e.value
                dt = time.ticks_diff(time.ticks_us(), t)
                after = kind(want)
                resumes.append((dt, time.ticks_diff(t, t0[0]), before, after, n[1]))
                if len(resumes) > 24:  # keep the longest
                    resumes.sort()
                    resumes.pop(0)
                before, exc = after, None
                try:
                    yield want
                except GeneratorExit:
                    gen.close()
                    raise
                except BaseException as e:  # thrown in by the driver: passed on
                    exc = e

        aio.drive = lambda gen, agent: real(timed(gen), agent)

    async def app():
        while True:
            await asyncio.sleep_ms(10)
            if n[0] < len(ticks):
                ticks[n[0]] = time.ticks_diff(time.ticks_us(), base)
                n[0] += 1

    async def main():
        task = asyncio.create_task(app())
        await asyncio.sleep_ms(55)  # the application is running
        gc.collect()
        t0[0] = time.ticks_us()
        if mode == "idle":
            await asyncio.sleep_ms(ms)
            r = {"result": "IDLE"}
        elif mode == "async":
            from mpota import aio

            r = await aio.update()
        elif mode == "blocking":
            r = mpota.update()
        else:
            raise SystemExit("unknown impact mode " + mode)
        t0[1] = time.ticks_diff(time.ticks_us(), t0[0])
        await asyncio.sleep_ms(25)  # the first tick after the window
        task.cancel()
        return r

    r = asyncio.run(main())
    Part.writeblocks, Part.readblocks = wb, rb
    start = time.ticks_diff(t0[0], base)
    first = 0
    while first + 1 < n[0] and ticks[first + 1] <= start:
        first += 1  # from the last tick before the window on
    res = r.get("result") if isinstance(r, dict) else r
    ok = res in ("STAGED", "IDLE")
    print("BENCH impact %.1f %s" % (t0[1] / 1000, res if ok else "FAILED %r" % (r,)))
    # written piece by piece: after an update the heap may be too fragmented
    # for one large string
    r = None
    gc.collect()
    w = sys.stdout.write
    w('IMPACT {"end": %d, "ticks": [' % t0[1])
    for i in range(first, n[0]):
        w("%s%d" % ("," if i > first else "", ticks[i] - start))
    w('], "blocks": [')
    for i in range(n[1]):
        b = blocks[i]
        w("%s[%d,%d]" % ("," if i else "", b - 1 if b > 0 else -b - 1, 1 if b > 0 else 2))
    w('], "resumes": %s}\n' % json.dumps(sorted(resumes, reverse=True)))


def main():
    mode = sys.argv[1]
    args = sys.argv[2:]
    if mode == "update":
        update()
    elif mode == "bare":
        bare(*args)
    elif mode == "write":
        write(int(args[0]))
    elif mode == "floor":
        floor(args[0], args[1], args[2], int(args[3]), args[4], args[5], args[6],
              len(args) > 7 and args[7] == "aes")
    elif mode == "impact":
        impact(args[0], int(args[1]), len(args) > 2 and args[2] == "slices")
    else:
        raise SystemExit("unknown mode " + mode)


main()
