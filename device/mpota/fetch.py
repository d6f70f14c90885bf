# The payload into a SlotWriter: one request from the resume point to the
# end (Range: bytes=N-) read in blocks; progress(committed) is saved when at
# least opts["window"] bytes and opts["save_ms"] ms (default 1000) have passed
# since the last save, before a retry and at the end (each save is a flash
# write); after a drop, reconnect with exponential backoff and jitter and go
# on from the last whole block with one new request.  Never reads past the
# payload's size.  Only retryable errors (drops, stalls, 5xx) are retried.
# opts["max_rate"] (bytes per second, 0: none) caps the download's average
# rate, block by block, so the application's own traffic keeps its share.
import gc
import os
import time

from mpota.errors import DownloadError, OTAError, TransportError


def download(client, url, writer, opts, progress=None, feed=None, ticks_ms=time.ticks_ms):
    """Steps (mpota.drive): fill writer (already resumed at its offset) from
    url; opts is the config's "download" section.  feed() (the watchdog)
    runs every window in which progress does not.  ticks_ms: the clock (a
    fake in tests)."""
    size = writer.total
    every = opts["window"]
    gap = opts.get("save_ms", 1000)
    saved = writer.committed  # as the caller saved it
    t = ticks_ms()
    failures = 0
    rate = opts.get("max_rate", 0)
    t0, base = time.ticks_ms(), writer.offset  # the rate cap's reference
    # no gc.collect() here: the check's connection carries the payload request
    # (a new connection collects first: mpota.http, and the retry below)
    while writer.offset < size:
        pre = writer.iv_needed()  # CBC resumes need the ciphertext block before offset
        start = writer.offset - pre
        mark = writer.committed
        try:
            r = yield from client.request("GET", url, {"Range": "bytes=%d-" % start})
            if r.status == 206:
                # the payload bytes from start (fewer than asked is allowed: the
                # rest is asked for next); anything else is refused
                text = r.range or ""
                try:
                    span, total = text[6:].split("/")
                    first, n = span.split("-")
                    n = int(n) - int(first) + 1
                    if text[:6] != "bytes " or int(first) != start or int(total) != size or \
                            not 0 < n <= size - start or r.length not in (None, n):
                        raise ValueError
                except ValueError:
                    raise DownloadError("%s sent Content-Range %r (Content-Length %s) for "
                                        "bytes=%d- of %d" % (r.url(), text[:40], r.length,
                                                             start, size))
            elif r.status == 200:
                # the server ignored Range: the body is the payload from byte 0
                if r.length not in (None, size):
                    raise DownloadError("server sends %d bytes, the manifest says %d (%s)"
                                        % (r.length, size, r.url()))
                yield from writer.skip(r, start)
                n = size - start
            else:
                client.expect(r, 206)
            if pre:
                iv = bytearray(pre)
                got = 0
                while got < pre:
                    k = r.readinto(memoryview(iv)[got:])
                    if k is None:
                        yield from r.wait()
                        continue
                    if not k:
                        raise TransportError("%s ended before the CBC IV" % r.url())
                    got += k
                writer.set_iv(iv)
                n -= pre
            end = writer.offset + n
            while writer.offset < end:
                # a block at a time: the step yields after each, the rate cap paces each
                yield from writer.pull(r, min(4096 - writer.offset % 4096,
                                              every - writer.offset % every, end - writer.offset))
                if rate:
                    ahead = (writer.offset - base) * 1000 // rate - time.ticks_diff(
                        time.ticks_ms(), t0)
                    if ahead > 0:
                        yield ahead
                if writer.offset % every and writer.offset < end:
                    continue  # inside a window
                now = ticks_ms()
                if progress and (writer.offset == size or (writer.committed - saved >= every
                                 and time.ticks_diff(now, t) >= gap)):
                    progress(writer.committed)
                    saved, t = writer.committed, now
                elif feed:
                    feed()
            failures = 0
        except OTAError as e:
            client.close()
            if not e.retryable or e.code == "busy":  # busy: the asyncio agent pauses the round
                raise
            writer.drop_partial()
            if progress and writer.committed > saved:
                # what arrived is kept across a reset during the backoff
                progress(writer.committed)
                saved, t = writer.committed, ticks_ms()
            if writer.committed > mark:
                failures = 0  # it got somewhere: a new run of failures
            failures += 1
            if failures > opts["retries"]:
                # still retryable: the agent resumes the download later
                raise TransportError("download failed %d times in a row, last: %s"
                                     % (failures, e))
            delay = min(opts["backoff_ms"] << (failures - 1), opts["backoff_max_ms"])
            delay += int.from_bytes(os.urandom(2), "little") % (delay // 2 + 1)
            print("mpota: %s; retrying at byte %d in %d ms" % (e, writer.offset, delay))
            if feed:
                feed()
            gc.collect()  # the old connection's buffers, before the next handshake
            yield delay
