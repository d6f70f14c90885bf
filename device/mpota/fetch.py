# Ranged download into a SlotWriter: windows of Range requests on one
# keep-alive connection, reconnect with exponential backoff and jitter after
# a drop, resume at the last fully written block, and never accept more
# bytes than the manifest announced.  Only retryable errors (drops, stalls,
# 5xx) are retried; a permanent refusal propagates at once.
import gc
import os
import time

from mpota.errors import DownloadError, OTAError, TransportError


def _jitter(limit):
    return int.from_bytes(os.urandom(2), "little") % (limit + 1)


def _content_range(text, r):
    # "bytes 0-65535/1572864" -> (0, 65535, 1572864)
    try:
        unit, spec = text.split(" ", 1)
        span, total = spec.split("/")
        first, last = span.split("-")
        if unit != "bytes":
            raise ValueError
        return int(first), int(last), int(total)
    except ValueError:
        raise DownloadError("bad Content-Range %r from %s" % (text[:40], r.url()))


def download(client, url, writer, opts, progress=None, sleep_ms=time.sleep_ms, feed=None):
    """Fill writer (already resumed at its offset) from url; opts is the
    config's "download" section.  progress(committed) runs after each window."""
    size = writer.total
    failures = 0
    while writer.offset < size:
        gc.collect()  # keep the heap in one piece for TLS records and the next window
        pre = writer.iv_needed()  # CBC resumes need the ciphertext block before offset
        start = writer.offset - pre
        end = min(start + pre + opts["window"], size) - 1
        try:
            r = client.request("GET", url, {"Range": "bytes=%d-%d" % (start, end)})
            if r.status == 206:
                first, last, total = _content_range(r.headers.get("content-range", ""), r)
                count = last - first + 1
                if first != start or total != size or last > end or \
                        (r.length is not None and r.length != count):
                    client.close()
                    raise DownloadError("server sent bytes %d-%d/%d (%s bytes) for a request of "
                                        "%d-%d/%d (%s)" % (first, last, total, r.length, start,
                                                           end, size, r.url()))
            elif r.status == 200:
                # The server ignored Range: the body is the payload from byte 0.
                if r.length is not None and r.length != size:
                    client.close()
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
                        raise TransportError("%s closed before the CBC IV" % r.url())
                    got += n
                writer.set_iv(iv)
                count -= pre
            writer.pull(r, count)  # an unread rest keeps the client from reusing the connection
            failures = 0
            if progress:
                progress(writer.committed)
        except OTAError as e:
            client.close()
            if not e.retryable:
                raise
            writer.drop_partial()
            failures += 1
            if failures > opts["retries"]:
                # still retryable: the agent resumes the download later
                raise TransportError("download failed %d times in a row, last: %s"
                                     % (failures, e))
            delay = min(opts["backoff_ms"] << (failures - 1), opts["backoff_max_ms"])
            delay += _jitter(delay // 2)
            print("mpota: %s; retrying at byte %d in %d ms" % (e, writer.offset, delay))
            if feed:
                feed()
            sleep_ms(delay)
