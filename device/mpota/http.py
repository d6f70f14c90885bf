# HTTP/1.1 over TLS, verified against the pinned CAs and the server's host
# name (micropython-lib's requests turns certificate checks off).
#
#   c = Client("https://updates.example.com", ca.certs(pem))   # base URL may be None
#   r = c.expect(c.request("GET", "/v1/update?x", {"Authorization": "..."}), 200)
#   data = r.read_all(8192)
#
# The client is also the response to its last request (status, headers,
# length, readinto, read_all): nothing is allocated per response but its
# headers.  One connection is kept and carries the next request once the
# response has been read to its end.  Failures: DownloadError (permanent),
# TLSError (certificate not trusted), TransportError (drop, stall, 5xx:
# retryable); decide by e.retryable.
import socket
import tls

from mpota.errors import ConfigError, DownloadError, TLSError, TransportError

_LINE = const(512)  # head lines are read in pieces of at most this
_HEAD_MAX = const(8192)  # the whole response head
_DISCARD = const(2048)  # a redirect or error body up to this is read to keep the connection
# the headers kept, as one string: a name is kept when it is part of it
# (others that are, like "range", are kept too and never read)
_KEEP = b"content-length content-range location connection transfer-encoding content-encoding"
_MOVED = (301, 302, 303, 307, 308)


def short(url):
    """url for a message: without its query (it may hold a signature), at most 100 chars."""
    q = url.find("?")
    if q >= 0:
        url = url[:q] + "?..."
    return url if len(url) <= 100 else url[:60] + "..." + url[-37:]


def _hp(host, port):
    return host if port == 443 else "%s:%d" % (host, port)


def _text(where):
    return short("https://%s%s" % (_hp(where[0], where[1]), where[2]))


def split_url(url):
    """'https://host:port/path?query' -> (host, port, path)."""
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


def _dots(path):
    # RFC 3986 5.2.4: "/a/b/../c" -> "/a/c", for relative redirects
    q = path.find("?")
    tail = "" if q < 0 else path[q:]
    segments = (path if q < 0 else path[:q]).split("/")
    out = []
    for seg in segments:
        if seg == "..":
            if len(out) > 1:
                out.pop()
        elif seg != ".":
            out.append(seg)
    if segments[-1] in (".", ".."):
        out.append("")
    return "/".join(out) + tail


def follow(where, location):
    """Where a redirect from where (host, port, path) to location goes."""
    host, port, path = where
    if location[:2] == "//":
        location = "https:" + location
    if ":" in location.split("/", 1)[0]:  # has a scheme
        if location[:8].lower() != "https://":
            raise DownloadError("refusing the redirect from %s to %s"
                                % (_text(where), short(location)))
        return split_url(location)
    path = path.split("?", 1)[0]
    if location[:1] == "?":
        return host, port, path + location
    if location[:1] != "/":
        location = path[:path.rfind("/") + 1] + location
    return host, port, _dots(location)


class Client:
    def __init__(self, base_url, cas, stall_s=10, redirects=3):
        """base_url: the mpota server (None: absolute https:// targets only);
        cas: the DER certificates to trust (mpota.ca.certs), or one DER."""
        self.base = None
        if base_url:
            host, port, prefix = split_url(base_url)
            self.base = (host, port, prefix.rstrip("/"))
        self.cas = [cas] if type(cas) in (bytes, bytearray) else cas
        self.stall_s = stall_s
        self.redirects = redirects
        self._sock = None
        self._at = None  # (host, port) of the open connection
        self._keep = False  # the open connection may carry another request
        self._moved = None  # (target, where): a GET redirect kept for the next requests
        # the response to the last request
        self.status = 0
        self.headers = None
        self.length = None  # Content-Length
        self.remaining = 0  # body bytes still to read; None: until the server closes
        self.where = None  # (host, port, path) it came from

    def close(self):
        if self._sock is not None:
            try:
                self._sock.close()
            except OSError:
                pass  # already broken: closing is best effort
        self._sock = None

    def url(self):
        return _text(self.where)

    def _connect(self, host, port):
        # True: the open connection carries the request; else a new verified one
        if self._sock is not None:
            if self._at == (host, port) and self._keep and self.remaining == 0:
                return True
            self.close()
        hp = _hp(host, port)
        if not self.cas:
            raise ConfigError("no CA certificate to verify %s" % hp)
        ctx = tls.SSLContext(tls.PROTOCOL_TLS_CLIENT)
        ctx.verify_mode = tls.CERT_REQUIRED
        for der in self.cas:
            try:
                ctx.load_verify_locations(der)  # each call adds to the trusted chain
            except ValueError as e:
                raise ConfigError("CA certificate refused by mbedTLS: %s" % e)
        raw = socket.socket()  # closed on every failure: an ESP32 has few sockets
        what = "cannot connect to"
        try:
            raw.settimeout(self.stall_s)
            raw.connect(socket.getaddrinfo(host, port)[0][-1])
            what = "TLS handshake failed with"
            self._sock = ctx.wrap_socket(raw, server_hostname=host)
        except ValueError as e:  # mbedTLS: the certificate check failed
            raw.close()
            raise TLSError("%s is not trusted: %s" % (hp, str(e).strip().replace("\n", "; ")))
        except (OSError, IndexError) as e:  # IndexError: the name has no address
            raw.close()
            raise TransportError("%s %s: %s" % (what, hp, e.args[1] if len(e.args) > 1 else e))
        self._at, self._keep = (host, port), True
        return False

    def _readline(self, where):
        # (one head line, more of it follows); the whole head is bounded
        line = self._sock.readline(_LINE)
        if not line:
            raise TransportError("%s closed the connection before answering" % _text(where))
        self._budget -= len(line)
        if self._budget < 0:
            raise DownloadError("response head over %d bytes from %s" % (_HEAD_MAX, _text(where)))
        return line, line[-1] != 10

    def _head(self, method, where):
        self._budget = _HEAD_MAX
        line, more = self._readline(where)
        parts = line.split(None, 2)
        try:
            if more or parts[0][:7] != b"HTTP/1.":
                raise ValueError
            status = int(parts[1])
        except (ValueError, IndexError):
            raise DownloadError("not an HTTP answer from %s" % _text(where))
        headers = {}
        while True:
            line, more = self._readline(where)
            if line in (b"\r\n", b"\n"):
                break
            colon = line.find(b":")
            name = line[:colon].strip().lower() if colon > 0 else None
            value = line[colon + 1:] if name in _KEEP else None
            while more:  # the rest of a long line: kept only for a header the agent reads
                line, more = self._readline(where)
                if value is not None:
                    value += line
            if value is not None:
                try:
                    headers[name.decode()] = value.decode().strip()
                except ValueError:
                    raise DownloadError("bad %s header from %s" % (name, _text(where)))
        length = headers.get("content-length")
        if length is not None:
            try:
                length = int(length)
                if length < 0:
                    raise ValueError
            except ValueError:
                raise DownloadError("bad Content-Length from %s" % _text(where))
        if status < 200 or status in (204, 304) or method == "HEAD":
            length = 0
        self.status, self.headers, self.length, self.where = status, headers, length, where
        self.remaining = None if "transfer-encoding" in headers else length
        if self.remaining is None or parts[0] == b"HTTP/1.0" or \
                "close" in headers.get("connection", "").lower():
            self._keep = False

    def _exchange(self, method, where, headers, body):
        # one request (head and body in one write: no Nagle stall) and its head
        for _ in range(2):
            reused = self._connect(where[0], where[1])
            head = ("%s %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: mpota\r\n"
                    "Accept-Encoding: identity\r\n" % (method, where[2], _hp(where[0], where[1])))
            for k in headers:
                head += "%s: %s\r\n" % (k, headers[k])
            if body is not None:
                head += "Content-Length: %d\r\n" % len(body)
            head = (head + "\r\n").encode()
            try:
                self._sock.write(head + body if body else head)
                self._head(method, where)
                return
            except DownloadError as e:  # a TransportError too
                self.close()  # the stream is somewhere inside a response
                if not (reused and e.retryable):
                    raise
            except OSError as e:
                self.close()
                if not reused:
                    raise TransportError("connection to %s broke: %s" % (_text(where), e))
            # the server had closed the idle kept-alive connection: once more, fresh

    def readinto(self, mv):
        """Read body bytes into mv (never past Content-Length); 0 at the end."""
        left = self.remaining
        if left is not None:
            if left == 0:
                return 0
            if len(mv) > left:
                mv = mv[:left]
        try:
            n = self._sock.readinto(mv)
        except (OSError, AttributeError) as e:  # AttributeError: closed
            raise TransportError("%s broke: %s" % (self.url(), e))
        if not n:
            if left:
                raise TransportError("%s closed %d bytes early" % (self.url(), left))
            self.remaining = 0
            return 0
        if left is not None:
            self.remaining = left - n
        return n

    def read_all(self, limit):
        """The whole body, refusing one longer than limit bytes.  A body
        without Content-Length ends when the server closes the connection."""
        size = self.length
        if size is None:
            size = limit + 1
        elif size > limit:
            raise DownloadError("%s: %d bytes, at most %d accepted" % (self.url(), size, limit))
        body = bytearray(size)
        mv = memoryview(body)
        got = 0
        while got < size:
            n = self.readinto(mv[got:])
            if not n:
                break
            got += n
        if got > limit:
            raise DownloadError("%s: over the %d bytes accepted" % (self.url(), limit))
        return bytes(mv[:got])

    def _drop(self):
        # read and forget a small body so the connection can carry the next request
        left = self.remaining
        if left is None or left > _DISCARD:
            self.close()
            return
        mv = memoryview(bytearray(128))
        try:
            while self.remaining:
                self.readinto(mv)
        except TransportError:
            self.close()

    def _final(self):
        if 200 <= self.status < 300:
            coding = self.headers.get("content-encoding", "identity").lower()
            if coding != "identity":
                self.close()
                raise DownloadError("%s is sent with Content-Encoding %s: serve it as is"
                                    % (self.url(), coding[:20]))
            if "transfer-encoding" in self.headers:
                self.close()
                raise DownloadError("%s is sent chunked: serve it with a Content-Length"
                                    % self.url())
        return self

    def request(self, method, target, headers=None, body=None):
        """Send a request and return the client as its response, following
        redirects.  target is a path under the base URL or an https:// URL.
        A GET that was redirected goes straight to the redirect's target next
        time, until that target stops answering 2xx (an expired signed URL)."""
        headers = headers or {}
        moved = self._moved
        if moved is not None and moved[0] == target and method == "GET":
            try:
                self._exchange(method, moved[1], headers, body)
            except TransportError:
                self._moved = None  # the target does not answer: the original URL may send
                raise  # elsewhere next time (a drop in a body keeps the target)
            if 200 <= self.status < 300:
                return self._final()
            self._moved = None  # back to the original URL for a fresh redirect
            self._drop()
        if "://" in target:
            where = split_url(target)
        elif self.base is None:
            raise DownloadError("%s is not an https:// URL (no server configured)" % short(target))
        else:
            where = self.base[0], self.base[1], self.base[2] + target
        first = where
        for _ in range(self.redirects + 1):
            self._exchange(method, where, headers, body)
            location = self.headers.get("location")
            if self.status not in _MOVED or location is None:
                if where is not first and method == "GET" and 200 <= self.status < 300:
                    self._moved = (target, where)
                return self._final()
            self._drop()
            if self.status == 303 or (method == "POST" and self.status < 303):
                method, body = "GET", None
            where = follow(where, location)
        self.close()
        raise DownloadError("more than %d redirects from %s" % (self.redirects, _text(first)))

    def expect(self, response, *ok):
        """response (this client) if its status is one of ok; else a
        DownloadError (TransportError for a passing fault) naming the status."""
        status = self.status
        if status in ok:
            return self
        self._drop()
        message = "HTTP %d%s (%s)" % (status, ": the server does not accept this device's "
                                       "id/token" if status == 401 else "", self.url())
        if status >= 500 or status in (408, 429):
            raise TransportError(message, status)
        raise DownloadError(message, status)
