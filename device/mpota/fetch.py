# The payload into a SlotWriter: one request from the resume point to the
# end (Range: bytes=N-) read in blocks, progress saved every opts["window"]
# bytes; after a drop, reconnect with exponential backoff and jitter and go on
# from the last whole block with one new request.  Never reads past the
# payload's size.  Only retryable errors (drops, stalls, 5xx) are retried.
import gc
import os
import time

from mpota.errors import DownloadError, OTAError, TransportError


def _span(r, start, size):
    # the payload bytes a 206 answer carries from start (fewer than asked is
    # allowed: the rest is asked for next); anything else is refused
    text = r.headers.get("content-range", "")
    try:
        unit, spec = text.split(" ", 1)
        span, total = spec.split("/")
        first, last = span.split("-")
        first, last, total = int(first), int(last), int(total)
        if unit != "bytes":
            raise ValueError
    except ValueError:
        raise DownloadError("bad Content-Range %r from %s" % (text[:40], r.url()))
    count = last - first + 1
    if first != start or total != size or not 0 < count <= size - start or \
            r.length not in (None, count):
        raise DownloadError("%s sent %s (Content-Length %s) for bytes=%d- of %d"
                            % (r.url(), text[:40], r.length, start, size))
    return count


def download(client, url, writer, opts, progress=None, sleep_ms=time.sleep_ms, feed=None):
    """Fill writer (already resumed at its offset) from url; opts is the
    config's "download" section.  progress(committed) runs every
    opts["window"] bytes and at the end."""
    size = writer.total
    every = opts["window"]
    failures = 0
    gc.collect()  # the heap in one piece for the TLS handshake
    while writer.offset < size:
        pre = writer.iv_needed()  # CBC resumes need the ciphertext block before offset
        start = writer.offset - pre
        mark = writer.committed
        try:
            r = client.request("GET", url, {"Range": "bytes=%d-" % start})
            if r.status == 206:
                count = _span(r, start, size)
            elif r.status == 200:
                # the server ignored Range: the body is the payload from byte 0
                if r.length not in (None, size):
                    raise DownloadError("server sends %d bytes, the manifest says %d (%s)"
                                        % (r.length, size, r.url()))
                writer.skip(r, start)
                count = size - start
            else:
                client.expect(r, 206)
            if pre:
                iv = bytearray(pre)
                got = 0
                while got < pre:
                    n = r.readinto(memoryview(iv)[got:])
                    if not n:
                        raise TransportError("%s ended before the CBC IV" % r.url())
                    got += n
                writer.set_iv(iv)
                count -= pre
            end = writer.offset + count
            while writer.offset < end:
                writer.pull(r, min(every - writer.offset % every, end - writer.offset))
                if progress:
                    progress(writer.committed)
            failures = 0
        except OTAError as e:
            client.close()
            if not e.retryable:
                raise
            writer.drop_partial()
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
            sleep_ms(delay)
