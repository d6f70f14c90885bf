# Strict JSON syntax of a manifest, checked before json.loads (the
# verification phase loads this module for that pass alone and drops it
# before the field checks in mpota.manifest):
#
#   key_id = check(raw)   # ValueError("<what> at <byte offset>")
#
import json

# Containers nested deeper than this are refused (a recipient sits at depth 4).
# The host's release.MAX_DEPTH is the same (a test keeps them equal).
MAX_DEPTH = 8


# Strict JSON (RFC 8259) in printable ASCII, checked before json.loads: the
# unix/ESP32 json module accepts missing commas and colons, trailing commas,
# leading zeros, raw control characters and bytes after the object, and the
# host's verify must reach the same verdict as the device on every manifest.
# Faults are ValueError("<what> at <byte offset>").


def _ws(raw, i):
    n = len(raw)
    while i < n and raw[i] in b" \t\n\r":
        i += 1
    return i


def _string(raw, i):
    # raw[i] is '"': the index after the closing quote
    n = len(raw)
    i += 1
    while i < n:
        c = raw[i]
        if c == 34:
            return i + 1
        if c == 92:
            i += 1
            if i < n and raw[i] == 117:  # \uXXXX
                if i + 5 > n:
                    raise ValueError("bad \\u at %d" % i)
                for k in range(i + 1, i + 5):
                    if raw[k] not in b"0123456789abcdefABCDEF":
                        raise ValueError("bad \\u at %d" % i)
                i += 4
            elif i >= n or raw[i] not in b'"\\/bfnrt':
                raise ValueError("bad escape at %d" % i)
        elif c < 32 or c > 126:
            raise ValueError("byte 0x%02x at %d" % (c, i))
        i += 1
    raise ValueError("open string")


def _digits(raw, i):
    n = len(raw)
    while i < n and 48 <= raw[i] <= 57:
        i += 1
    return i


def _number(raw, i):
    start = i
    n = len(raw)
    if i < n and raw[i] == 45:  # -
        i += 1
    if i < n and raw[i] == 48:  # a lone 0: no leading zeros
        i += 1
    elif i < n and 49 <= raw[i] <= 57:
        i = _digits(raw, i)
    else:
        raise ValueError("bad value at %d" % start)
    if i < n and raw[i] == 46:  # .
        i = _digits(raw, i + 1)
        if raw[i - 1] == 46:
            raise ValueError("bad number at %d" % i)
    if i < n and raw[i] in b"eE":
        i += 1
        if i < n and raw[i] in b"+-":
            i += 1
        j = _digits(raw, i)
        if j == i:
            raise ValueError("bad number at %d" % i)
        i = j
    return i


def _key(raw, i, keys):
    # a quoted key and its ':' at raw[i]: (index of the value, the key)
    if i >= len(raw) or raw[i] != 34:
        raise ValueError("expected key at %d" % i)
    j = _string(raw, i)
    name = json.loads(raw[i:j]) if raw.find(b"\\", i, j) >= 0 else raw[i + 1 : j - 1].decode()
    if name in keys:
        raise ValueError("duplicate key %r" % name)
    keys.append(name)
    j = _ws(raw, j)
    if j >= len(raw) or raw[j] != 58:
        raise ValueError("expected ':' at %d" % j)
    return _ws(raw, j + 1), name


def check(raw):
    """Check that raw is one strict JSON object (printable ASCII, no duplicate
    keys, nested at most MAX_DEPTH deep); ValueError naming the first fault.
    Returns the top-level key_id's value, or None."""
    n = len(raw)
    stack = []  # per open container: its keys (an object) or None (an array)
    key_id = None
    top_key_id = False
    i = _ws(raw, 0)
    if i >= n or raw[i] != 123:
        raise ValueError("not an object")
    while True:
        c = raw[i] if i < n else -1
        if c == 123 or c == 91:  # { [
            if len(stack) >= MAX_DEPTH:
                raise ValueError("nested > %d at %d" % (MAX_DEPTH, i))
            j = _ws(raw, i + 1)
            if j < n and raw[j] == c + 2:  # } ]: empty
                i = j + 1
            else:
                stack.append([] if c == 123 else None)
                i = j
                if c == 123:
                    i, name = _key(raw, i, stack[-1])
                    top_key_id = len(stack) == 1 and name == "key_id"
                continue
        elif c == 34:
            j = _string(raw, i)
            if top_key_id:
                key_id = raw[i + 1 : j - 1].decode()
            i = j
        elif c in b"tfn":
            for word in (b"true", b"false", b"null"):
                if raw.startswith(word, i):
                    i += len(word)
                    break
            else:
                raise ValueError("bad value at %d" % i)
        elif c < 0:
            raise ValueError("cut short")
        else:
            i = _number(raw, i)
        top_key_id = False
        while True:  # after a value: ',' or the end of its container
            i = _ws(raw, i)
            if not stack:
                if i != n:
                    raise ValueError("%d bytes after '}'" % (n - i))
                return key_id
            if i >= n:
                raise ValueError("cut short")
            c = raw[i]
            if c == 44:
                i = _ws(raw, i + 1)
                if stack[-1] is not None:
                    i, name = _key(raw, i, stack[-1])
                    top_key_id = len(stack) == 1 and name == "key_id"
                break
            if c == (93 if stack[-1] is None else 125):
                stack.pop()
                i += 1
                continue
            raise ValueError("expected ',' at %d" % i)
