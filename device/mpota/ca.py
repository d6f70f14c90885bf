# The CA file the agent pins: PEM or DER, one certificate or a bundle (a
# release host and a CDN it redirects to may chain to different CAs).
#
#   ders = certs(open("ca.pem", "rb").read())   # [DER bytes, ...]
#
# Each DER is handed to tls.SSLContext.load_verify_locations() on its own.
import binascii

_BEGIN = b"-----BEGIN CERTIFICATE-----"
_END = b"-----END CERTIFICATE-----"
_MAX = const(8)


def _der_length(data, at):
    # (header length, body length) of the ASN.1 SEQUENCE at data[at]
    if at + 2 > len(data) or data[at] != 0x30:
        raise ValueError("not a DER certificate at byte %d" % at)
    first = data[at + 1]
    if first < 0x80:
        return 2, first
    count = first & 0x7F
    if not 1 <= count <= 3 or at + 2 + count > len(data):
        raise ValueError("bad DER length at byte %d" % at)
    return 2 + count, int.from_bytes(data[at + 2:at + 2 + count], "big")


def _split_der(data):
    out = []
    at = 0
    while at < len(data):
        # zero padding after the last certificate (some tools add it) ends the
        # file; a certificate's own bytes may end in 0x00, so nothing is stripped
        if not data[at] and data[at:] == bytes(len(data) - at):
            break
        head, body = _der_length(data, at)
        end = at + head + body
        if end > len(data):
            raise ValueError("DER certificate at byte %d is cut short" % at)
        out.append(bytes(data[at:end]))
        at = end
    return out


def _split_pem(data):
    out = []
    at = data.find(_BEGIN)
    while at >= 0:
        end = data.find(_END, at)
        if end < 0:
            raise ValueError("PEM certificate without its END line")
        try:
            der = binascii.a2b_base64(data[at + len(_BEGIN):end])
        except ValueError:
            raise ValueError("PEM certificate with bad base64")
        out.extend(_split_der(der))
        at = data.find(_BEGIN, end)
    return out


def certs(data):
    """The DER certificates in a PEM or DER file (one or several);
    ValueError naming the problem when there are none or one is damaged."""
    data = bytes(data)
    if b"-----BEGIN" in data:
        found = _split_pem(data)
    else:
        found = _split_der(data)
    if not found:
        raise ValueError("no certificate in it")
    if len(found) > _MAX:
        raise ValueError("%d certificates; at most %d" % (len(found), _MAX))
    return found
