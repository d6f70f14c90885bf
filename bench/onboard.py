# ruff: noqa: UP031  (MicroPython: %-formatting)
# Run on the simulated board by bench/update_bench.py (one measurement per
# process, the agent installed in /lib as .mpy, its config in mpota.json):
#
#   onboard.py update                  mpota.update() (check + install; auto_apply off)
#   onboard.py bare HOST PORT PATH     a bare TLS GET of the payload into one 4 KiB buffer
#   onboard.py write SIZE              raw writeblocks of SIZE bytes into the next slot
#   onboard.py floor HOST PORT PATH SIZE PUB DIGEST SIG [aes]
#       the secure floor: GET + SHA-256 + (AES-CBC) + write, read-back + SHA-256,
#       one P-256 verify
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
import simtrace

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
    simtrace.start()
    t0 = time.ticks_us()
    result = mpota.update()
    ms = ms_since(t0)
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
    t0 = time.ticks_us()
    for block in range((size + BLOCK - 1) // BLOCK):
        part.writeblocks(block, buf)
    print("BENCH write %.1f %d" % (ms_since(t0), size))


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
        verify = (p256.verify, q, d, sg)
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
    else:
        raise SystemExit("unknown mode " + mode)


main()
