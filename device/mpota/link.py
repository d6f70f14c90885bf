# The server link: what the agent asks of an mpota server (is there an
# update? here is my state).  Loaded for each exchange and dropped after;
# the TLS connection (agent.client()) stays open between them.  Unit tests
# hand the agent another object with the same two functions (Agent(...,
# link=fake)): see tests/device/test_agent_unit.py.
import json

from mpota.errors import ConfigError, DownloadError, TransportError

_OFFER_LIMIT = const(12288)
_SHORT = const(256)  # an answer this long is no offer: no block buffer for it


def _auth(agent):
    cfg = agent.cfg
    if cfg["server"] is None:
        raise ConfigError("no server configured: use mpota.update(URL)")
    return {"X-Device-Id": cfg["device_id"], "Authorization": "Bearer " + cfg["token"]}


def check(agent, code):
    """Steps: the server's answer for this board at version_code code: an offer
    dict with "update" (bool) and, when true, "manifest", "signature" (base64)
    and "payload_url"."""
    auth = _auth(agent)
    c = agent.client()
    agent.lend_block(c)
    r = c.expect((yield from c.request("GET", "/v1/update?board=%s&version_code=%d"
                                       % (agent.cfg["board"], code), auth)), 200)
    n = r.length
    # an offer (not a short "no update") is read into the install's block
    # buffer when an install may follow (taken back after a TLS handshake)
    buf = agent.spare() if n is None or n > _SHORT else None
    try:
        if buf is not None and n is not None and n <= len(buf):
            got = 0
            while got < n:  # read into the buffer and parse it there: no copy
                k = r.readinto(buf[got:n])
                if k is None:
                    yield from r.wait()
                    continue
                if not k:
                    raise TransportError("update check: answer cut short")
                got += k
            offer = json.loads(buf[:n])
        else:
            offer = json.loads((yield from r.read_all(_OFFER_LIMIT)))
    except ValueError:
        raise DownloadError("update check: answer is not JSON")
    if type(offer) is not dict or type(offer.get("update")) is not bool:
        raise DownloadError("update check: no 'update' flag")
    if offer["update"]:
        for name in ("manifest", "signature", "payload_url"):
            if type(offer.get(name)) is not str:
                raise DownloadError("update offer lacks %r" % name)
    return offer


def report(agent, body):
    """Steps: POST the state report body (a dict) to the server."""
    h = _auth(agent)
    h["Content-Type"] = "application/json"
    c = agent.client()
    c.expect((yield from c.request("POST", "/v1/report", h, json.dumps(body).encode())), 200)
    yield from c.read_all(1024)
