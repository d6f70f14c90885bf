# HTTP/1.1 over TLS, verified against the pinned CAs and the server's host
# name (micropython-lib's requests turns certificate checks off).
#
#   c = Client("https://updates.example.com", ca.certs(pem))   # base URL may be None
#   r = c.expect((yield from c.request("GET", "/v1/update?x", {"Authorization": "..."})), 200)
#   data = yield from r.read_all(8192)   # a bytearray (json.loads takes it)
#
# request() and read_all() are step generators (mpota.drive runs them; the
# asyncio agent, mpota.aio, too): with nb=True the socket is non-blocking,
# the TLS handshake runs inside the first write, and where the socket has
# nothing yet they yield (0, sock) (wait until readable) or (1, sock)
# (writable); readinto() then returns None.  With nb=False (the blocking
# API) the socket blocks with a stall timeout and nothing waits in Python.
#
# The client is also the response to its last request (status, length,
# range: the Content-Range text or None, readinto, read_all): nothing is
# allocated per response but the few headers it reads.  One connection is
# kept and carries the next request once the response has been read to its
# end.  Failures: DownloadError (permanent), TLSError (certificate not
# trusted), TransportError (drop, stall, 5xx: retryable); decide by
# e.retryable.
#
# Written for a small heap: few functions, short names (every attribute and
# argument name is interned when the .mpy loads), one message per failure
# (each string over 10 characters is an object of its own).
import gc
import socket
import tls

from mpota.errors import ConfigError, DownloadError, TLSError, TransportError

_LINE = const(512)  # head lines are read in pieces of at most this
_HEAD = const(8192)  # the whole response head
_DISCARD = const(2048)  # a redirect or error body up to this is read to keep the connection
# the headers read are kept by their position in
#   b" content-length content-range location connection transfer-encoding content-encoding "
_LENGTH = const(1)
_RANGE = const(16)
_LOCATION = const(30)
_CONNECTION = const(39)
_CHUNKED = const(50)  # Transfer-Encoding
_ENCODING = const(68)  # Content-Encoding


def short(url):
    """url for a message: without its query (it may hold a signature), at most 100 chars."""
    q = url.find("?")
    if q >= 0:
        url = url[:q] + "?..."
    return url if len(url) <= 100 else url[:60] + "..." + url[-37:]


def _hp(w):
    # (host, port, ...) -> "host" or "host:port", as in the Host header
    return w[0] if w[1] == 443 else "%s:%d" % (w[0], w[1])


def split_url(url, w=None):
    """'https://host:port/path?query' -> (host, port, path).  With w (host,
    port, path), url may also be relative to it (a redirect's Location)."""
    if url[:2] == "//":
        url = "https:" + url
    if w and ":" not in url.split("/", 1)[0]:  # no scheme: relative to w
        path = w[2].split("?", 1)[0]
        if url[:1] == "?":
            return w[0], w[1], path + url
        if url[:1] != "/":
            url = path[:path.rfind("/") + 1] + url
        # RFC 3986 5.2.4: "/a/b/../c" -> "/a/c"
        q = url.find("?")
        tail = "" if q < 0 else url[q:]
        segs = (url if q < 0 else url[:q]).split("/")
        out = []
        for seg in segs:
            if seg == "..":
                if len(out) > 1:
                    out.pop()
            elif seg != ".":
                out.append(seg)
        if segs[-1] in (".", ".."):
            out.append("")
        return w[0], w[1], "/".join(out) + tail
    if url[:8].lower() != "https://":
        raise DownloadError("not an https:// URL: " + short(url))
    rest = url[8:].split("#", 1)[0]
    cut = len(rest)
    for sep in "/?":
        at = rest.find(sep)
        if 0 <= at < cut:
            cut = at
    host, path = rest[:cut], rest[cut:]
    if path[:1] != "/":
        path = "/" + path
    port = 443
    if ":" in host:
        host, port = host.rsplit(":", 1)
        try:
            port = int(port)
        except ValueError:
            host = ""
    if not host:
        raise DownloadError("bad URL " + short(url))
    return host, port, path


def unpark(state):
    """A Client on the connection Client.park() kept."""
    c = Client(None, ())
    c.s, c.base, c.cas, c.stall, c.hops, c.keep, c.moved, c.where, c.left, c.nb = state
    return c


class Client:
    def __init__(self, url, cas, stall=10, hops=3, nb=False):
        """url: the mpota server (None: absolute https:// targets only);
        cas: the DER certificates to trust (mpota.ca.certs), or one DER;
        stall: seconds without data; hops: the redirects followed; nb:
        non-blocking sockets (the asyncio agent; or a transport class the
        TLS socket is put on, mpota.aio.Records)."""
        self.nb = nb
        self.base = None
        if url:
            w = split_url(url)
            self.base = (w[0], w[1], w[2].rstrip("/"))
        self.cas = [cas] if type(cas) in (bytes, bytearray) else cas
        self.stall = stall
        self.hops = hops
        self.s = None  # the socket, open to where's host
        self.raw = None  # its TCP socket until a non-blocking handshake is done (a failed
        # one lets go of it unclosed: MicroPython's tls)
        self.keep = False  # the open connection may carry another request
        self.moved = None  # (target, where): a GET redirect kept for the next requests
        # the response to the last request
        self.status = 0
        self.h = None  # {position: value} of the headers read
        self.length = None  # Content-Length
        self.range = None  # Content-Range
        self.left = 0  # body bytes still to read; None: until the server closes
        self.where = None  # (host, port, path) it came from

    def close(self):
        for s in (self.s, self.raw):
            if s is not None:
                try:
                    s.close()
                except OSError:
                    pass  # already broken: closing is best effort
        self.s = self.raw = None

    def park(self):
        """The open connection's state without the class (socket first): the
        agent keeps it while mpota.http is dropped for the verifier's room,
        and unpark() puts it back in a Client that reuses the connection."""
        return (self.s, self.base, self.cas, self.stall, self.hops, self.keep, self.moved,
                self.where, self.left, self.nb)

    def url(self, w=None):
        """The URL of the last request (or of w), for a message."""
        w = w or self.where
        return short("https://" + _hp(w) + w[2])

    def _send(self, method, w, headers, body):
        # one request (head and body in one write: no Nagle stall) and its head
        hp = _hp(w)
        for _ in range(2):
            s = self.s
            reused = s is not None and self.where[:2] == w[:2] and self.keep and self.left == 0
            self.where = w
            if not reused:
                if s is not None:
                    self.close()
                    gc.collect()  # the old connection's TLS buffers, before a new handshake
                if not self.cas:
                    raise ConfigError("no CA certificate for " + hp)
                ctx = tls.SSLContext(tls.PROTOCOL_TLS_CLIENT)
                ctx.verify_mode = tls.CERT_REQUIRED
                try:
                    for der in self.cas:
                        ctx.load_verify_locations(der)  # each call adds to the trusted chain
                except ValueError as e:
                    raise ConfigError("CA certificate refused: %s" % e)
                raw = socket.socket()  # closed on every failure: an ESP32 has few sockets
                what = "cannot connect to"
                try:
                    try:
                        # TCP_NODELAY: else the handshake's last flight waits ~40 ms
                        # for the server's delayed ACK (Nagle)
                        raw.setsockopt(6, 1, 1)
                    except (OSError, AttributeError):
                        pass  # a stack without the option: only slower
                    addr = socket.getaddrinfo(w[0], w[1])[0][-1]  # (a blocking lookup)
                    if self.nb:
                        raw.setblocking(False)
                        try:
                            raw.connect(addr)
                        except OSError as e:
                            if e.args[0] not in (115, 119):  # EINPROGRESS: unix, lwIP
                                raise
                            yield (1, raw)
                    else:
                        raw.settimeout(self.stall)
                        raw.connect(addr)
                    what = "TLS handshake failed with"
                    # non-blocking: the handshake runs in the request's write below;
                    # nb may be a transport class (mpota.aio.Records) put under it
                    t = raw if type(self.nb) is bool else self.nb(raw)
                    self.s = s = ctx.wrap_socket(t, server_hostname=w[0],
                                                 do_handshake_on_connect=not self.nb)
                    if self.nb:
                        self.raw = t
                except ValueError as e:  # mbedTLS: the certificate check failed
                    raw.close()
                    raise TLSError("%s is not trusted: %s"
                                   % (hp, str(e).strip().replace("\n", "; ")))
                except (OSError, IndexError) as e:  # IndexError: the name has no address
                    raw.close()
                    raise TransportError("%s %s: %s"
                                         % (what, hp, e.args[1] if len(e.args) > 1 else e))
                del ctx, raw
                self.keep = True
            head = ("%s %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: mpota\r\n"
                    "Accept-Encoding: identity\r\n" % (method, w[2], hp))
            for k in headers:
                head += "%s: %s\r\n" % (k, headers[k])
            if body is not None:
                head += "Content-Length: %d\r\n" % len(body)
            data = (head + "\r\n").encode()
            del head
            sent = False
            try:
                mv = memoryview(data + body if body else data)
                del data
                while mv:
                    n = s.write(mv)
                    if n is None:  # non-blocking: no room yet (or the handshake waits)
                        yield (1, s)
                    else:
                        mv = mv[n:]
                del mv
                sent = True
                if self.raw is not None and type(self.nb) is not bool:
                    self.raw.pause = -1  # (Records) the handshake is done: reads pass through
                self.raw = None
                # the head, read in pieces of at most _LINE bytes, _HEAD in all;
                # h keeps the status line (at -1) and the headers the client
                # reads (at their position in the string above); at 0: a line not kept
                budget = _HEAD
                h = {}
                at = -1
                cont = False  # the line goes on from the last piece
                try:
                    while True:
                        line = s.readline(_LINE)
                        if line is None:  # non-blocking: nothing yet
                            yield (0, s)
                            continue
                        if not line:
                            raise TransportError("%s closed before answering" % self.url())
                        budget -= len(line)
                        if budget < 0:
                            raise ValueError
                        end = line[-1] == 10
                        if cont:
                            if at:
                                h[at] += line
                        elif h and line in (b"\r\n", b"\n"):
                            break
                        else:
                            if h:
                                c = line.find(b":")
                                at = b" content-length content-range location connection " \
                                    b"transfer-encoding content-encoding ".find(
                                        b" " + line[:c].strip().lower() + b" ") + 1 if c > 0 else 0
                                line = line[c + 1:]
                            if at:
                                h[at] = line
                        cont = not end
                    for at in h:
                        h[at] = h[at].decode().strip()
                    v = h[-1].split(None, 2)
                    if v[0][:7] != "HTTP/1.":
                        raise ValueError
                    status = int(v[1])
                    n = h.get(_LENGTH)
                    if n is not None:
                        n = int(n)
                        if n < 0:
                            raise ValueError
                except (ValueError, IndexError):  # over _HEAD bytes too
                    raise DownloadError("bad HTTP answer from " + self.url())
                if status < 200 or status in (204, 304) or method == "HEAD":
                    n = 0
                self.status, self.h, self.length, self.range = status, h, n, h.get(_RANGE)
                self.left = None if _CHUNKED in h else n
                if self.left is None or v[0] == "HTTP/1.0" or \
                        "close" in h.get(_CONNECTION, "").lower():
                    self.keep = False
                return
            except DownloadError as e:  # a TransportError too
                self.close()  # the stream is somewhere inside a response
                if not (reused and e.retryable):
                    raise
            except ValueError as e:  # the deferred handshake's certificate check (nb)
                self.close()
                raise TLSError("%s is not trusted: %s" % (hp, str(e).strip().replace("\n", "; ")))
            except OSError as e:
                self.close()
                if self.nb and not (reused or sent):  # the connect, or the handshake in the write
                    raise TransportError("%s %s: %s" % (
                        "cannot connect to" if e.args and e.args[0] in (111, 113, 118) else what,
                        hp, e.args[1] if len(e.args) > 1 else e))
                if not reused:
                    raise TransportError("%s broke: %s" % (self.url(), e))
            except MemoryError:
                self.close()  # mid-response: the next request (a report) needs a fresh one
                raise
            # the server had closed the idle kept-alive connection: once more, fresh

    def readinto(self, mv):
        """Read body bytes into mv (never past Content-Length); 0 at the end,
        None when a non-blocking socket has nothing yet."""
        left = self.left
        if left is not None:
            if left == 0:
                return 0
            if len(mv) > left:
                mv = mv[:left]
        try:
            n = self.s.readinto(mv)
        except (OSError, AttributeError) as e:  # AttributeError: closed
            raise TransportError("%s broke: %s" % (self.url(), e))
        if n is None:  # non-blocking: nothing yet (yield from wait(), then call again)
            return None
        if not n:
            if left:
                raise TransportError("%s closed %d bytes early" % (self.url(), left))
            self.left = 0
            return 0
        if left is not None:
            self.left = left - n
        return n

    def wait(self):
        """Steps: until the socket has bytes again (readinto() returned None);
        a stall (the driver throws ETIMEDOUT) is a TransportError."""
        try:
            yield (0, self.s)
        except OSError as e:
            raise TransportError("%s broke: %s" % (self.url(), e))

    def read_all(self, limit):
        """The whole body as a bytearray (read in place: no copy), refusing
        one longer than limit bytes.  A body without Content-Length ends
        when the server closes the connection."""
        n = self.length
        if n is not None and n > limit:
            raise DownloadError("%s: over the %d bytes accepted" % (self.url(), limit))
        body = bytearray(limit + 1 if n is None else n)
        mv = memoryview(body)
        got = 0
        while got < len(body):
            k = self.readinto(mv[got:])
            if k is None:
                yield from self.wait()
                continue
            if not k:
                break
            got += k
        if n is None:
            if got > limit:
                raise DownloadError("%s: over the %d bytes accepted" % (self.url(), limit))
            body[got:] = b""  # in place: no copy
        return body

    def expect(self, r, *ok):
        """r (this client) if its status is one of ok; else a DownloadError
        (TransportError for a passing fault) naming the status.  expect(r)
        alone reads and forgets a small body so the connection can carry the
        next request (a larger one closes it)."""
        status = self.status
        if status in ok:
            return self
        left = self.left
        if left is None or left > _DISCARD:
            self.close()
        else:
            mv = memoryview(bytearray(128))
            try:
                while self.left:
                    if self.readinto(mv) is None:
                        self.close()  # not there yet: not worth a wait
                        break
            except TransportError:
                self.close()
        if not ok:
            return self
        e = TransportError if status >= 500 or status in (408, 429) else DownloadError
        raise e("HTTP %d%s (%s)" % (status, ": the server does not accept this device's "
                                    "id/token" if status == 401 else "", self.url()), status)

    def request(self, method, target, headers=None, body=None):
        """Send a request and return the client as its response, following
        redirects.  target is a path under the base URL or an https:// URL.
        A GET that was redirected goes straight to the redirect's target next
        time, until that target stops answering 2xx (an expired signed URL)."""
        headers = headers or {}
        base = self.base
        first = split_url(target) if base is None or "://" in target else \
            (base[0], base[1], base[2] + target)
        m = self.moved
        m = m[1] if m and m[0] == target and method == "GET" else None  # a kept target
        w = m or first
        n = 0  # redirects followed
        while True:
            try:
                yield from self._send(method, w, headers, body)
            except TransportError:
                if w is m:  # the target does not answer: the original URL may send
                    self.moved = None  # elsewhere next time (a drop in a body keeps it)
                raise
            status = self.status
            url = self.h.get(_LOCATION)
            if w is m and not 200 <= status < 300:
                self.moved = m = None  # back to the original URL for a fresh redirect
                w = first
            elif status not in (301, 302, 303, 307, 308) or url is None:
                break
            else:
                n += 1
                if n > self.hops:
                    self.close()
                    raise DownloadError("more than %d redirects from %s"
                                        % (self.hops, self.url(first)))
                if status == 303 or (method == "POST" and status < 303):
                    method, body = "GET", None
                w = split_url(url, w)
            self.expect(self)  # the body of the answer left behind
        if 200 <= status < 300:
            if w is not first and method == "GET":
                self.moved = (target, w)
            h = self.h
            if h.get(_ENCODING, "identity").lower() != "identity":
                bad = "Content-Encoding " + h[_ENCODING][:20]
            elif _CHUNKED in h:
                bad = "Transfer-Encoding " + h[_CHUNKED][:20]
            else:
                return self
            self.close()
            raise DownloadError("%s is sent with %s: serve it as is, with a Content-Length"
                                % (self.url(), bad))
        return self
