"""gateway.strict.parse_json: the one JSON reader for what strangers send (answer_url and
action_url bodies, REST request bodies). Crafted input gets a ValidationError naming the
problem, never another exception; ordinary JSON reads as json.loads reads it."""

from __future__ import annotations

import json
import random
import sys
from typing import Any

import pytest

from gateway.actions.schema import parse_body
from gateway.room_requests import parse_announcement, parse_patch
from gateway.strict import ValidationError, parse_json

HOSTILE = [
    (b"", "malformed JSON: Expecting value at line 1 column 1"),
    (b"{", "malformed JSON: Expecting property name enclosed in double quotes"),
    (b"\xff\xfe{}", "malformed JSON: not UTF-8"),
    ("{}".encode("utf-16"), "malformed JSON: not UTF-8"),  # json.loads would take it
    ("[1]".encode("utf-32-be"), "malformed JSON: Expecting value"),
    (b"[" * 200_000, "malformed JSON: nested too deeply"),
    (b'{"a": ' * 50_000, "malformed JSON: nested too deeply"),
    (b"9" * 4301, "malformed JSON: a number too long"),
    (b"-" + b"1" * 5000, "malformed JSON: a number too long"),
    (b"[1e999]", "malformed JSON: number 1e999 is out of range"),
    (b"[-1e400]", "malformed JSON: number -1e400 is out of range"),
    (b"NaN", "malformed JSON: NaN is not JSON"),
    (b'{"x": [Infinity]}', "malformed JSON: Infinity is not JSON"),
    (b"-Infinity", "malformed JSON: -Infinity is not JSON"),
    (b'{"a": 1, "a": 1}', "malformed JSON: duplicate key 'a'"),
    (b'{"o": {"k": 1, "j": 2, "k": 3}}', "malformed JSON: duplicate key 'k'"),
    (b'{"' + b"k" * 10_000 + b'": 1, "' + b"k" * 10_000 + b'": 2}',
     "malformed JSON: duplicate key '" + "k" * 64 + "'"),
    (b'{"a": 1} trailing', "malformed JSON: Extra data"),
]


@pytest.mark.parametrize(("raw", "reason"), HOSTILE, ids=[r[1][16:44] for r in HOSTILE])
def test_hostile_json_is_a_validation_error(raw: bytes, reason: str) -> None:
    with pytest.raises(ValidationError) as info:
        parse_json(raw, "invalid body")
    (detail,) = info.value.details
    assert detail.path == ""
    assert detail.reason.startswith(reason), detail.reason
    assert len(detail.reason) < 200  # a key of 10,000 characters is not echoed whole


SMALL = [h for h in HOSTILE if len(h[0]) < 60_000]  # under the answer_url body limit


@pytest.mark.parametrize(("raw", "reason"), SMALL, ids=[r[1][16:44] for r in SMALL])
def test_every_reader_of_strangers_json_uses_it(raw: bytes, reason: str) -> None:
    """The answer_url document and the two room request bodies (the REST API's own bodies
    are checked over HTTP in tests/test_api_core.py)."""
    for parse in (parse_body, parse_patch, parse_announcement):
        with pytest.raises(ValidationError) as info:
            parse(raw)
        assert info.value.details[0].reason.startswith(reason), (parse.__name__, raw[:20])


def _value(rng: random.Random, depth: int) -> Any:
    kind = rng.randrange(8 if depth < 4 else 6)
    if kind == 0:
        return None
    if kind == 1:
        return rng.random() < 0.5
    if kind == 2:
        return rng.randint(-10**30, 10**30)
    if kind == 3:
        return rng.choice([0.0, -0.0, 1e-300, sys.float_info.max, rng.uniform(-1e9, 1e9)])
    if kind in (4, 5):
        return "".join(chr(rng.choice([rng.randrange(32, 127), rng.randrange(0x80, 0x2FFF),
                                       rng.randrange(0, 32)])) for _ in range(rng.randrange(8)))
    if kind == 6:
        return [_value(rng, depth + 1) for _ in range(rng.randrange(5))]
    return {str(_value(rng, 9)): _value(rng, depth + 1) for _ in range(rng.randrange(5))}


def test_ordinary_json_reads_as_json_loads_reads_it() -> None:
    rng = random.Random(20261124)
    for _ in range(2000):
        raw = json.dumps(_value(rng, 0), ensure_ascii=rng.random() < 0.5)
        assert parse_json(raw) == json.loads(raw)
        assert parse_json(raw.encode()) == json.loads(raw)
