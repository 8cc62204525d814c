"""Pure, deterministic mutations of a valid SIP request: case N of seed S is always the same
bytes, so any finding can be replayed and kept as a named regression case."""

from __future__ import annotations

import random
from collections.abc import Callable

from tests.fuzz.messages import Message

# Sizes an overlong value takes: around pjlib's and pjsip's fixed buffers (PJ_MAX_HOSTNAME
# 254, PJSIP_MAX_URL_SIZE 256, the 4000-byte packet), past UDP, and 64 KiB for TCP.
LONG = (255, 256, 300, 513, 1100, 4000, 4100, 9000, 65535)
FORMAT = ("%n", "%s", "%x", "%p", "%99999999d", "%.9999f", "{0}", "${jndi:x}", "\\x00")
NUMBERS = ("-1", "0", "-2147483649", "2147483648", "4294967296", "18446744073709551616",
           "9" * 40, "1e999", "0x7fffffff", "NaN", "+5", " 5 ", "")
WEIRD = ("\x00", "\x00\x00abc", "\udcff\udcfe", "\u202e", "\t", "\r", "\n", "\r\n ", ";", ",",
         "<", ">", '"', "\\", "@", ":", "sip:", "<sip:>", ";tag=", "%00", "%", "\x7f", "\udc80")


def _value(rng: random.Random, old: str) -> tuple[str, str]:
    """A hostile replacement for one value."""
    kind = rng.randrange(8)
    if kind == 0:
        n = rng.choice(LONG)
        return (rng.choice(["a", "9", "%n", ".", "A@", "["]) * n)[:n], f"long{n}"
    if kind == 1:
        return "".join(rng.choice(FORMAT) for _ in range(rng.randrange(1, 200))), "format"
    if kind == 2:
        return rng.choice(NUMBERS), "number"
    if kind == 3:  # a weird character somewhere inside the old value
        i = rng.randrange(len(old) + 1)
        return old[:i] + rng.choice(WEIRD) * rng.randrange(1, 4) + old[i:], "weird-char"
    if kind == 4:
        return "", "empty"
    if kind == 5:  # random bytes, smuggled through surrogate escapes where not UTF-8
        raw = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 400)))
        return raw.decode("utf-8", "surrogateescape"), "random-bytes"
    if kind == 6:  # numbers inside the value made extreme
        out, changed = [], False
        for tok in old.split(" "):
            if tok.isdigit():
                tok, changed = rng.choice(NUMBERS), True
            out.append(tok)
        return (" ".join(out), "numbers-inside") if changed else (old * 50, "repeat")
    return old + rng.choice(WEIRD) + old, "splice"


def _header(rng: random.Random, m: Message) -> str:
    i = rng.randrange(len(m.headers))
    name, value = m.headers[i]
    op = rng.randrange(6)
    if op == 0:
        m.headers.insert(i, (name, value))
        return f"dup:{name}"
    if op == 1:
        del m.headers[i]
        return f"missing:{name}"
    if op == 2:
        m.headers[i] = (rng.choice(["", " ", name * 300, name + " x", "Via\x00", "\udcff"]), value)
        return f"name:{name}"
    if op == 3:  # many copies: header count limits
        m.headers[i + 1:i + 1] = [(name, value)] * rng.choice([50, 500])
        return f"many:{name}"
    new, how = _value(rng, value)
    m.headers[i] = (name, new)
    return f"value:{name}:{how}"


def _sdp_line(rng: random.Random, m: Message) -> str:
    lines = m.body.split("\r\n")
    lines = [ln for ln in lines if ln] or ["v=0"]
    i = rng.randrange(len(lines))
    line = lines[i]
    kind, value = line[:2], line[2:]
    op = rng.randrange(5)
    if op == 0:
        lines.insert(i, line)
        desc = f"sdp-dup:{kind}"
    elif op == 1:
        del lines[i]
        desc = f"sdp-missing:{kind}"
    elif op == 2:
        lines[i] = rng.choice(["x=", "=", "", "m=", "c=IN", "a=" + "a" * 3000, line[::-1]])
        desc = f"sdp-line:{kind}"
    elif op == 3 and " " in value:  # one field of the line
        fields = value.split(" ")
        j = rng.randrange(len(fields))
        fields[j], how = _value(rng, fields[j])
        lines[i] = kind + " ".join(fields)
        desc = f"sdp-field:{kind}{j}:{how}"
    else:
        new, how = _value(rng, value)
        lines[i] = kind + new
        desc = f"sdp-value:{kind}:{how}"
    m.body = "\r\n".join(lines) + "\r\n"
    return desc


def _content_length(rng: random.Random, m: Message) -> str:
    n = len(m.body.encode("utf-8", "surrogateescape"))
    m.content_length = rng.choice([str(n + 1), str(n + 1000), str(max(0, n - 5)), "0", "-1",
                                   "-99999", "4294967296", "99999999999999999999", "abc",
                                   "", " ", "5 5"])
    return f"content-length:{m.content_length}"


def _multipart(rng: random.Random, m: Message) -> str:
    depth = rng.choice([1, 2, 5, 20, 100])
    body = m.body or "v=0\r\n"
    ctype = "application/sdp"
    for level in range(depth):
        b = f"b{level}" if rng.randrange(4) else "x" * rng.choice([1, 70, 300])
        body = (f"--{b}\r\nContent-Type: {ctype}\r\n\r\n{body}\r\n"
                f"--{b}\r\nContent-Type: application/isup\r\n\r\n\x00\x01\r\n--{b}--\r\n")
        ctype = f'multipart/mixed;boundary="{b}"'
    m.body = body
    m.headers = [(n, ctype if n.lower() == "content-type" else v) for n, v in m.headers]
    if not any(n.lower() == "content-type" for n, _ in m.headers):
        m.headers.append(("Content-Type", ctype))
    return f"multipart:{depth}"


def _request_line(rng: random.Random, m: Message) -> str:
    method, uri, version = ([*m.start.split(" "), "", "", ""])[:3]
    part = rng.randrange(3)
    if part == 0:
        method, how = _value(rng, method)
    elif part == 1:
        uri, how = _value(rng, uri)
    else:
        version, how = _value(rng, version)
    m.start = " ".join([method, uri, version])
    return f"request-line:{part}:{how}"


MUTATORS: tuple[tuple[int, Callable[[random.Random, Message], str]], ...] = (
    (40, _header), (25, _sdp_line), (8, _content_length), (5, _multipart), (7, _request_line),
)


def mutate(message: Message, rng: random.Random) -> tuple[bytes, str]:
    """One to three mutations of `message` (changed in place), then maybe a truncation."""
    descs = []
    weights = [w for w, _ in MUTATORS]
    for _ in range(rng.choice([1, 1, 1, 2, 3])):
        fn = rng.choices([f for _, f in MUTATORS], weights)[0]
        if fn is _sdp_line and not message.body:
            fn = _header
        descs.append(fn(rng, message))
    data = message.encode()
    if rng.randrange(10) == 0:
        cut = rng.randrange(1, len(data))
        data = data[:cut]
        descs.append(f"truncated:{cut}")
    return data, "+".join(descs)
