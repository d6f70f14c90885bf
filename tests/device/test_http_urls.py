"""URLs in the device HTTP client (pure, on the unix port): splitting, the
redirect forms web servers send, and URLs as error messages show them."""

from __future__ import annotations

from helpers import unix_results


def test_split_url() -> None:
    out = unix_results("""
from mpota.http import split_url
from mpota.errors import DownloadError
for url in ("https://h/a/b?x=1", "https://h:8443", "HTTPS://h?q", "https://h:8443/p#frag",
            "http://h/", "https://h:x/", "https:///p"):
    try:
        result(list(split_url(url)))
    except DownloadError as e:
        result(str(e))
""")
    assert out == [["h", 443, "/a/b?x=1"], ["h", 8443, "/"], ["h", 443, "/?q"],
                   ["h", 8443, "/p"], "not an https:// URL: http://h/",
                   "bad URL https://h:x/", "bad URL https:///p"]


def test_redirect_locations_resolve_like_a_browser() -> None:
    out = unix_results("""
from mpota.http import split_url
from mpota.errors import DownloadError
here = ("origin", 8443, "/rel/v1/payload?sig=1")
for loc in ("https://cdn:444/b", "//cdn/b?s=2", "/abs/x", "other", "../v2/payload",
            "./p/../q", "?sig=2", "/a/b/..", "http://cdn/b", "ftp://cdn/b"):
    try:
        result(list(split_url(loc, here)))
    except DownloadError as e:
        result(str(e))
""")
    assert out == [["cdn", 444, "/b"], ["cdn", 443, "/b?s=2"], ["origin", 8443, "/abs/x"],
                   ["origin", 8443, "/rel/v1/other"], ["origin", 8443, "/rel/v2/payload"],
                   ["origin", 8443, "/rel/v1/q"], ["origin", 8443, "/rel/v1/payload?sig=2"],
                   ["origin", 8443, "/a/"], "not an https:// URL: http://cdn/b",
                   "not an https:// URL: ftp://cdn/b"]


def test_messages_never_show_a_query_or_a_very_long_url() -> None:
    long_path = "/" + "d" * 200 + "/payload"
    (plain, signed, long) = unix_results(f"""
from mpota.http import short
result(short("https://h/p"))
result(short("https://h/p?X-Amz-Signature=SECRET"))
result(short("https://h{long_path}"))
""")
    assert (plain, signed) == ("https://h/p", "https://h/p?...")
    assert len(long) == 100 and long.startswith("https://h/ddd") and long.endswith("d/payload")
