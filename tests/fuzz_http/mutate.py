"""Seeded mutations of JSON documents and of the text they are sent as.

A document is mutated as a tree (a value swapped for a hostile one, a key added, dropped or
renamed, an object made an array, a nest made deep) and then, sometimes, as text: tokens no
JSON encoder writes (a 5,000-digit integer, NaN, 1e999, -0, a duplicate key, a lone surrogate
escape, invalid UTF-8, truncation). Everything depends only on the `random.Random` given, so a
case is replayed from its seed and number.
"""

from __future__ import annotations

import copy
import json
import random
from typing import Any

# Numbers a schema does not expect: huge, tiny, negative zero, floats where ints go, bools.
NUMBERS: tuple[Any, ...] = (
    0, -1, 1, 2, 59, 60, 61, 100, 101, 1000, 1001, 3600, 3601, 65535, 65536, 2**31, 2**63,
    -(2**63), 10**30, 10**309, -(10**400), 10**4000, 0.5, -0.0, 1e-300, 1.7976931348623157e308,
    1e308, 4.9e-324, True, False, None,
)
# Number tokens written into the text as they are (json.dumps cannot produce most of them).
RAW_NUMBERS = ("1" + "0" * 5000, "-" + "9" * 4301, "9" * 4300, "NaN", "Infinity", "-Infinity",
               "1e999", "-1e999", "-0", "1E400", "0.1e-99999", "1" * 400, "1" * 309 + ".5",
               "00", "01", "+1", ".5", "1.", "0x10", "1_000")
CONTROL = "".join(chr(c) for c in range(0, 32)) + "\x7f"
UNICODE = ("é", "\u200b", "\u202e", "\ufeff", "\U0001f600", "\u0301", "\u210c", "\uffff", "Ω",
           "\u2028", "\u0000", "\ud800", "\udfff")
FRAGMENTS = ("..", "../", "/", "%00", "%2e%2e%2f", "%", "%zz", "%ff", "\\", "?", "#", "&", "=",
             ";", "@", ":", "'", '"', "<script>", "%s%n%x", "{}", "[]", "\r\n", " ", "\t",
             "sip:", "http://", "https://127.0.0.1:1/", "file:///etc/passwd", "call_", "ä")


def string(rng: random.Random) -> str:
    """A hostile string: empty, long, control characters, lone surrogates, path tricks."""
    kind = rng.randrange(10)
    if kind == 0:
        return ""
    if kind == 1:
        return rng.choice("aZ9._-#*") * rng.choice((64, 65, 128, 129, 200, 201, 253, 254, 255,
                                                    256, 2048, 2049, 4000, 4001, 70000))
    if kind == 2:
        return "".join(rng.choice(CONTROL) for _ in range(rng.randrange(1, 8)))
    if kind == 3:
        return "".join(rng.choice(UNICODE) for _ in range(rng.randrange(1, 8)))
    if kind == 4:
        return "".join(rng.choice(FRAGMENTS) for _ in range(rng.randrange(1, 6)))
    if kind == 5:
        return str(rng.choice(NUMBERS))
    if kind == 6:
        return rng.choice(("http://", "https://")) + string_plain(rng) + rng.choice(
            ("", ":0", ":65536", ":99999999999", "/%00", "/" + "a" * 3000, "@evil", "#x"))
    if kind == 7:
        return rng.choice(("sip:", "sips:", "tel:", "")) + string_plain(rng) + "@" + rng.choice(
            ("127.0.0.1", "[::1]", "[::ffff:127.0.0.1]", "example.invalid", "1.2.3.4:0",
             "a" * 254, "10.0.0.1:65536", "[zz]", "127.1", "0", "-a-.b", "x@y", ""))
    if kind == 8:
        return string_plain(rng) + rng.choice(UNICODE + FRAGMENTS)
    return "x" * rng.randrange(0, 3)


def string_plain(rng: random.Random) -> str:
    return "".join(rng.choice("abcXYZ019._-+") for _ in range(rng.randrange(0, 12)))


def value(rng: random.Random, depth: int = 0) -> Any:
    """Any JSON value, most of them wrong for wherever they land."""
    kind = rng.randrange(8 if depth < 3 else 5)
    if kind in (0, 1):
        return rng.choice(NUMBERS)
    if kind in (2, 3):
        return string(rng)
    if kind == 4:
        return rng.choice((None, True, False, [], {}, "", 0))
    if kind == 5:
        return [value(rng, depth + 1) for _ in range(rng.randrange(0, 4))]
    if kind == 6:
        return {string_plain(rng) or "k": value(rng, depth + 1) for _ in range(rng.randrange(3))}
    return deep(rng)


def deep(rng: random.Random) -> Any:
    """A deep nest of arrays or objects (past the parser's recursion limit at times)."""
    levels = rng.choice((10, 100, 400))  # deeper nests are written as text (text())
    out: Any = rng.choice((1, "x", None))
    for _ in range(levels):
        out = [out] if rng.random() < 0.5 else {"a": out}
    return out


def _nodes(doc: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [path]
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += _nodes(v, (*path, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += _nodes(v, (*path, i))
    return out


def _get(doc: Any, path: tuple[Any, ...]) -> Any:
    for p in path:
        doc = doc[p]
    return doc


def _set(doc: Any, path: tuple[Any, ...], new: Any) -> Any:
    if not path:
        return new
    _get(doc, path[:-1])[path[-1]] = new
    return doc


def _swap(v: Any, rng: random.Random) -> Any:
    """The same value as another type."""
    if isinstance(v, str):
        return rng.choice((len(v), [v], {"v": v}, None))
    if isinstance(v, bool):
        return rng.choice((int(v), str(v).lower(), None))
    if isinstance(v, int):
        return rng.choice((str(v), v + 0.5 if abs(v) < 2**53 else 1e308, v > 0, [v]))
    if isinstance(v, float):
        return rng.choice((str(v), int(v), [v]))
    return rng.choice(("", 0, None, True))


def tree(doc: Any, rng: random.Random, names: tuple[str, ...] = ()) -> tuple[Any, str]:
    """One to three structural mutations of a (copied) document; `names` are field names
    the schema knows, to add where they do not belong. Returns (doc, what was done)."""
    doc = copy.deepcopy(doc)
    done = []
    for _ in range(rng.choice((1, 1, 1, 2, 3))):
        nodes = _nodes(doc)
        path = rng.choice(nodes)
        node = _get(doc, path)
        op = rng.randrange(9)
        if op <= 2:  # swap the value for a hostile one
            doc = _set(doc, path, value(rng))
            done.append(f"value@{path}")
        elif op == 3 and isinstance(node, dict) and node:  # drop a key
            node.pop(rng.choice(list(node)))
            done.append(f"drop@{path}")
        elif op == 4 and isinstance(node, dict):  # add a key: known elsewhere, or junk
            key = rng.choice(names) if names and rng.random() < 0.6 else string(rng)[:300]
            node[key] = value(rng)
            done.append(f"add@{path}")
        elif op == 5 and isinstance(node, dict):  # object -> array of its values / pairs
            doc = _set(doc, path, rng.choice((list(node.values()), [node], list(node.items()))))
            done.append(f"array@{path}")
        elif op == 6 and isinstance(node, list):  # array -> object, or grown huge
            doc = _set(doc, path, rng.choice(({str(i): v for i, v in enumerate(node)},
                                              node * rng.choice((2, 51, 101, 1001)),
                                              node[0] if node else {})))
            done.append(f"unarray@{path}")
        elif op == 7:  # wrap in a nest
            doc = _set(doc, path, rng.choice(([node], {"actions": node}, {"x": node})))
            done.append(f"wrap@{path}")
        else:  # same value, other type
            doc = _set(doc, path, _swap(node, rng))
            done.append(f"type@{path}")
    return doc, ",".join(done)


def encode(doc: Any) -> bytes:
    """JSON as a client would send it; a lone surrogate is written as its escape."""
    return json.dumps(doc, ensure_ascii=True, allow_nan=True).encode()


def text(raw: bytes, rng: random.Random) -> tuple[bytes, str]:
    """A text-level mutation of encoded JSON (what a tree cannot express)."""
    op = rng.randrange(10)
    digits = [i for i, c in enumerate(raw) if chr(c).isdigit()
              and (i == 0 or not chr(raw[i - 1]).isalnum())]
    if op <= 2 and digits:  # replace a number with a raw token
        i = rng.choice(digits)
        j = i
        while j < len(raw) and chr(raw[j]) in "0123456789.eE+-":
            j += 1
        return raw[:i] + rng.choice(RAW_NUMBERS).encode() + raw[j:], "number"
    if op == 3:  # duplicate the first key of some object
        i = raw.find(b'{"')
        if i >= 0:
            j = raw.find(b",", i)
            k = raw.find(b"}", i)
            end = min(x for x in (j, k) if x >= 0) if (j >= 0 or k >= 0) else -1
            if end > 0:
                return raw[:end] + b"," + raw[i + 1:end] + raw[end:], "duplicate"
    if op == 4:
        cut = rng.randrange(len(raw) + 1)
        return raw[:cut], "truncate"
    if op == 5:
        i = rng.randrange(len(raw) + 1)
        junk = rng.choice((b"\x00", b"\xff", b"\xc3", b"\xed\xa0\x80", b"\\ud800", b"\\u0000",
                           b"\xef\xbb\xbf", b"\\", b'"', b"]", b"}", b",", b" " * 10000))
        return raw[:i] + junk + raw[i:], "bytes"
    if op == 6:
        enc = rng.choice(("utf-16", "utf-32", "utf-16-le", "latin-1"))
        return raw.decode().encode(enc, "replace"), enc
    if op == 7:
        return rng.choice((b"", b"null", b"[]", b"{}", b"0", b'""', b"true", b"[" * 100_000,
                           b'{"a":' * 20000, b"\xef\xbb\xbf" + raw, raw + b"garbage",
                           raw + raw, b" \n\t" + raw)), "whole"
    if op == 8:  # the document nested past the parser's recursion limit
        n = rng.choice((999, 1001, 5000, 100_000))
        return rng.choice((b"[" * n + raw + b"]" * n,
                           b'{"a":' * n + raw + b"}" * n)), "deep"
    return raw, "none"


def document(doc: Any, rng: random.Random, names: tuple[str, ...] = (), *,
             tree_rate: float = 0.85, text_rate: float = 0.35) -> tuple[bytes, str]:
    """The bytes of one fuzz case built from a valid document."""
    how = "valid"
    if rng.random() < tree_rate:
        doc, how = tree(doc, rng, names)
    raw = encode(doc)
    if rng.random() < text_rate:
        raw, what = text(raw, rng)
        how += "+" + what
    return raw, how
