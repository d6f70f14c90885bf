# Checking a release before any byte of it is written: the one entry point
# of the verification phase.  The agent imports it for that step and drops it
# after, with what it loaded (mpota.verify, .syntax, .manifest, .keys, .p256,
# .ecies, .keywrap):
#
#   from mpota import verify
#   fields, key = yield from verify.release(raw, sig, cfg["trusted_pems"], facts, nvs)
#
# release and authenticate are step generators (see mpota.drive): they pause
# inside the P-256 verify and ECDH (mpota.p256), so an asyncio application
# keeps running; blocking: mpota.drive(verify.release(...)).
#
# raw: the manifest's exact bytes; sig: its 64-byte raw r||s signature;
# trusted: the trusted signing keys (PEM text, or any form keys.public_key
# takes); facts: (board, chip_id, running version_code, security floor,
# slot size in bytes, now: seconds since 1970 UTC or None when the clock is
# not trusted); nvs: the mpota NVS namespace (read only for an encrypted
# release).  Returns the manifest's fields (a dict) and the 32-byte content
# key, or None for a plain release.  Raises ManifestError (the signature
# first, then the fields, then the device's facts), DecryptionError, or
# ConfigError "bad-key" for a trusted key that cannot be read.
#
# Each step loads what it needs and drops it before the next (mpota.drop),
# so the heap holds one step's code at a time: the signature (keys, then
# p256), the syntax (syntax), the fields (manifest), the content key
# (ecies with p256, then with keywrap).
import mpota
from mpota.errors import ManifestError

MAX_MANIFEST = 4096


def authenticate(raw, sig, trusted):
    """Steps: the id of the trusted key whose signature sig is over the exact bytes raw."""
    if len(raw) > MAX_MANIFEST:
        raise ManifestError("manifest %d bytes > %d" % (len(raw), MAX_MANIFEST),
                            "manifest-too-large")
    if len(sig) != 64:
        raise ManifestError("signature %d bytes, not 64" % len(sig), "bad-signature")
    if not trusted:
        raise ManifestError("no trusted key", "unknown-key")
    import hashlib

    from mpota import keys, p256

    found = []
    for k in trusted:
        q = keys.public_key(k)
        kid = keys.key_id(keys.point_bytes(q))
        # a key whose id the manifest names is tried first (only an order:
        # nothing in raw is trusted before the signature verifies)
        found.insert(0 if kid.encode() in raw else len(found), (kid, q))
    del keys, q
    mpota.drop("keys")  # only the points are needed now
    digest = hashlib.sha256(raw).digest()
    for kid, q in found:
        if (yield from p256.verify(q, digest, sig)):
            return kid
    ids = ",".join(k[0] for k in found)
    del found, p256
    mpota.drop("p256")
    from mpota import syntax

    try:  # the claimed signer, only to word the refusal
        claimed = syntax.check(raw)
    except Exception:
        claimed = None
    if claimed is not None and claimed not in ids:
        raise ManifestError("key %s not trusted (%s)" % (claimed, ids), "unknown-key")
    raise ManifestError("signature does not verify (%s)" % ids, "bad-signature")


def release(raw, sig, trusted, facts, nvs):
    """Steps: (fields, content key or None) of a release this device may install."""
    kid = yield from authenticate(raw, sig, trusted)
    mpota.drop("p256", "keys")
    from mpota import syntax

    try:
        syntax.check(raw)
    except Exception as e:  # ValueError, MemoryError, UnicodeError: all mean "not JSON"
        raise ManifestError("not strict JSON: %s" % e)
    del syntax
    mpota.drop("syntax")
    from mpota import manifest

    f = manifest.parse(raw, kid)
    manifest.judge(f, facts)
    enc = f.get("encryption")
    if enc is None:
        return f, None
    del manifest
    mpota.drop("manifest")
    from mpota import ecies

    return f, (yield from ecies.content_key(enc, nvs))
