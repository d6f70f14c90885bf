# URLs for the HTTP client (mpota.http): splitting an https:// URL, resolving
# a redirect's Location against the URL it came from (RFC 3986), URLs as
# messages show them, and the redirects a request follows (request(): the
# hops, the kept target of a redirected GET).  mpota.http holds the
# connection: one TLS socket, one request and its response head at a time.
from mpota.errors import DownloadError, TransportError

_LOCATION = const(30)  # mpota.http's position of the Location header
_CHUNKED = const(50)  # Transfer-Encoding
_ENCODING = const(68)  # Content-Encoding


def short(url):
    """url for a message: without its query (it may hold a signature), at most 100 chars."""
    q = url.find("?")
    if q >= 0:
        url = url[:q] + "?..."
    return url if len(url) <= 100 else url[:60] + "..." + url[-37:]


def hp(w):
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


def request(c, method, target, headers=None, body=None):
    """Client.request (a method of mpota.http.Client): send a request and
    return the client as its response, following redirects.  target is a
    path under the base URL or an https:// URL.  A GET that was redirected
    goes straight to the redirect's target next time, until that target
    stops answering 2xx (an expired signed URL)."""
    headers = headers or {}
    base = c.base
    first = split_url(target) if base is None or "://" in target else \
        (base[0], base[1], base[2] + target)
    m = c.moved
    m = m[1] if m and m[0] == target and method == "GET" else None  # a kept target
    w = m or first
    n = 0  # redirects followed
    while True:
        try:
            c._send(method, w, headers, body)
        except TransportError:
            if w is m:  # the target does not answer: the original URL may send
                c.moved = None  # elsewhere next time (a drop in a body keeps it)
            raise
        status = c.status
        url = c.h.get(_LOCATION)
        if w is m and not 200 <= status < 300:
            c.moved = m = None  # back to the original URL for a fresh redirect
            w = first
        elif status not in (301, 302, 303, 307, 308) or url is None:
            break
        else:
            n += 1
            if n > c.hops:
                c.close()
                raise DownloadError("more than %d redirects from %s" % (c.hops, c.url(first)))
            if status == 303 or (method == "POST" and status < 303):
                method, body = "GET", None
            w = split_url(url, w)
        c.expect(c)  # the body of the answer left behind
    if 200 <= status < 300:
        if w is not first and method == "GET":
            c.moved = (target, w)
        h = c.h
        if h.get(_ENCODING, "identity").lower() != "identity":
            bad = "Content-Encoding " + h[_ENCODING][:20]
        elif _CHUNKED in h:
            bad = "Transfer-Encoding " + h[_CHUNKED][:20]
        else:
            return c
        c.close()
        raise DownloadError("%s is sent with %s: serve it as is, with a Content-Length"
                            % (c.url(), bad))
    return c
