# Ranged download into a SlotWriter: windows of Range requests on one
# keep-alive connection, reconnect with exponential backoff and jitter after
# a drop, resume at the last fully written block, and never accept more
# bytes than the manifest announced.
import gc
import os
import time

from mpota.errors import DownloadError, TransportError


def _jitter(limit):
    return int.from_bytes(os.urandom(2), "little") % (limit + 1)


def _content_range(text):
    # "bytes 0-65535/1572864" -> (0, 65535, 1572864)
    try:
        unit, spec = text.split(" ", 1)
        span, total = spec.split("/")
        first, last = span.split("-")
        if unit != "bytes":
            raise ValueError
        return int(first), int(last), int(total)
    except ValueError:
        raise DownloadError("bad Content-Range %r" % text)


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
                first, last, total = _content_range(r.headers.get("content-range", ""))
                if first != start or total != size or last > end:
                    client.close()
                    raise DownloadError("server sent bytes %d-%d/%d for a request of %d-%d/%d"
                                        % (first, last, total, start, end, size))
                count = last - first + 1
            elif r.status == 200:
                # The server ignored Range: the body is the payload from byte 0.
                if r.length is not None and r.length != size:
                    client.close()
                    raise DownloadError("server sends %d bytes, the manifest says %d"
                                        % (r.length, size))
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
                        raise TransportError("connection closed before the CBC IV")
                    got += n
                writer.set_iv(iv)
                count -= pre
            writer.pull(r, count)
            if r.remaining:
                client.close()  # unread body: the connection cannot be reused
            failures = 0
            if progress:
                progress(writer.committed)
        except TransportError as e:
            client.close()
            writer.drop_partial()
            failures += 1
            if failures > opts["retries"]:
                raise DownloadError("download failed %d times in a row, last: %s"
                                    % (failures, e))
            delay = min(opts["backoff_ms"] << (failures - 1), opts["backoff_max_ms"])
            delay += _jitter(delay // 2)
            print("mpota: %s; retrying at byte %d in %d ms" % (e, writer.offset, delay))
            if feed:
                feed()
            sleep_ms(delay)
