"""The pure parsers behind the HTTP side, fuzzed in-process: each may raise only its
documented error (ValidationError, ApiError, TargetRefused, MediaError) or none at all.
Anything else is a finding: in the gateway it becomes a 500, or a call flow that dies with
a Traceback."""

from __future__ import annotations

import random
import struct
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gateway import signing
from gateway.actions.schema import parse_body, parse_document
from gateway.api.calls import listing
from gateway.api.core import ApiError, empty_body, json_body
from gateway.call.request import parse_call_request
from gateway.demo import room_for
from gateway.dialing import TargetRefused, parse_target
from gateway.media_cache import MediaError, audio_kind, max_age_s, wav_info
from gateway.netguard import AddressPolicy, BlockedAddress, check_url, redact
from gateway.room_requests import parse_announcement, parse_patch
from gateway.strict import ValidationError
from tests.fuzz_http import corpus, mutate

BASE = "http://127.0.0.1:9"
NAMES = corpus.field_names()


@dataclass
class Report:
    cases: int = 0
    refused: int = 0  # cases that raised the documented error
    by_target: dict[str, int] = field(default_factory=dict)
    findings: dict[str, str] = field(default_factory=dict)  # "Type@target" -> first replay
    seconds: float = 0.0

    def summary(self) -> str:
        rate = self.cases / self.seconds if self.seconds else 0.0
        return (f"pure: cases={self.cases} refused={self.refused} "
                f"seconds={self.seconds:.1f} ({rate:.0f}/s) findings={len(self.findings)}")


# -- the targets: (name, build the input, call the parser, its documented errors) -----------
def _doc_bytes(rng: random.Random) -> bytes:
    return mutate.document(corpus.actions_document(rng, BASE), rng, NAMES)[0]


def _doc_tree(rng: random.Random) -> Any:
    return mutate.tree(corpus.actions_document(rng, BASE), rng, NAMES)[0]


def _call_tree(rng: random.Random) -> Any:
    return mutate.tree(corpus.call_request(rng, BASE), rng, NAMES)[0]


def _patch_bytes(rng: random.Random) -> bytes:
    return mutate.document(corpus.patch(rng), rng, NAMES)[0]


def _announce_bytes(rng: random.Random) -> bytes:
    return mutate.document(corpus.announcement(rng, BASE), rng, NAMES)[0]


def _target(rng: random.Random) -> str:
    good = rng.choice(("sip:2002@127.0.0.1:5060", "sips:a@[::1]", "sip:x@example.com;t=udp",
                       "sip:+49@host.example:5061?h=1"))
    return rng.choice((mutate.string(rng), good[:rng.randrange(len(good) + 1)]
                       + mutate.string(rng) + good[rng.randrange(len(good) + 1):]))


def _query(rng: random.Random) -> dict[str, str]:
    q: dict[str, str] = {}
    if rng.random() < 0.8:
        q["state"] = rng.choice(("live", "ended", "ENDED", "", mutate.string(rng)))
    if rng.random() < 0.8:
        q["limit"] = rng.choice((str(rng.choice(mutate.NUMBERS)), mutate.string(rng),
                                 rng.choice(mutate.RAW_NUMBERS), "٣", "1_0", " 5 ", "+7",
                                 "-0", "\x00"))
    return q


def _cache_control(rng: random.Random) -> str:
    parts = [rng.choice(("max-age=60", "no-cache", "no-store", "public", "max-age=",
                         "max-age=" + "9" * rng.choice((10, 11, 400, 5000)), "max-age=-1",
                         "max-age=٣", "MAX-AGE=5", "max-age=1.5", "s-maxage=9",
                         mutate.string(rng)))
             for _ in range(rng.randrange(1, 4))]
    return rng.choice((", ", ",", " ,  ", ";")).join(parts)


def _media_body(rng: random.Random) -> bytes:
    fmt = struct.pack("<HHIIHH", rng.choice((1, 3, 6, 7, 0xFFFE, 0)),
                      rng.choice((0, 1, 2, 9, 65535)),
                      rng.choice((0, 1, 7999, 8000, 48000, 192001, 2**32 - 1)),
                      rng.choice((0, 16000, 2**32 - 1)), rng.choice((0, 2, 65535)),
                      rng.choice((0, 1, 8, 16, 24, 65535)))
    size = rng.choice((0, 1, 16, 15, 2**32 - 1, 100))
    chunks = [b"fmt " + struct.pack("<I", rng.choice((16, 15, 2**32 - 1, 18))) + fmt,
              b"data" + struct.pack("<I", size) + bytes(rng.randrange(0, 300)),
              b"LIST" + struct.pack("<I", rng.choice((0, 1, 3, 2**32 - 2))) + b"xyz"]
    rng.shuffle(chunks)
    body = b"RIFF" + struct.pack("<I", rng.choice((0, 2**32 - 1))) + b"WAVE" + b"".join(
        chunks * rng.choice((1, 1, 40)))
    if rng.random() < 0.3:
        body = body[:rng.randrange(len(body) + 1)]
    if rng.random() < 0.2:
        body = rng.choice((b"ID3", b"\xff\xfb", b"\xff", b"", b"<html>", b"RIFF")) + body[4:]
    return body


def _signature(rng: random.Random) -> str | None:
    good = signing.sign("s3cret", b"{}")
    return rng.choice((None, "", good, good + "," + mutate.string(rng), mutate.string(rng),
                       "t=" + rng.choice(mutate.RAW_NUMBERS) + ",v1=ab", "t=,v1=", "=,=,",
                       "v1=" + "é" * 64, good.replace("t=", "t=" + rng.choice(("٣", "-", " ")))))


POLICY = AddressPolicy.from_config(["10.0.0.0/8", "media.example"])


def _url(rng: random.Random) -> str:
    """A URL from an application's response, as check_url and the logs see it."""
    good = rng.choice(("http://127.0.0.1:8080/x", "https://user:pw@[::ffff:10.0.0.1]/a?b=c",
                       "http://media.example/p.wav", "http://0x7f.1/", "http://[fe80::1%25eth0]/"))
    cut = rng.randrange(len(good) + 1)
    return rng.choice((mutate.string(rng), good[:cut] + mutate.string(rng) + good[cut:]))


def _apply(fn: Callable[..., Any]) -> Callable[[Any], Any]:
    return lambda x: fn(*x) if isinstance(x, tuple) else fn(x)


Target = tuple[str, Callable[[random.Random], Any], Callable[[Any], Any],
               tuple[type[BaseException], ...]]
TARGETS: tuple[Target, ...] = (
    ("parse_body", _doc_bytes, parse_body, (ValidationError,)),
    ("parse_document", _doc_tree, parse_document, (ValidationError,)),
    ("parse_call_request", _call_tree, parse_call_request, (ValidationError,)),
    ("json_body", _patch_bytes, json_body, (ApiError,)),
    ("empty_body", _patch_bytes, empty_body, (ApiError,)),
    ("parse_patch", _patch_bytes, parse_patch, (ValidationError,)),
    ("parse_announcement", _announce_bytes, parse_announcement, (ValidationError,)),
    ("parse_target", _target, parse_target, (TargetRefused,)),
    ("calls.listing", _query, listing, (ApiError,)),
    ("max_age_s", _cache_control, max_age_s, ()),
    ("audio_kind", _media_body, audio_kind, ()),
    ("wav_info", lambda r: (_media_body(r), r.choice((1.0, 60.0, 1e9))), _apply(wav_info),
     (MediaError,)),
    ("signing.verify", lambda r: ("s3cret", r.choice((b"{}", b"")), _signature(r)),
     _apply(signing.verify), ()),
    ("demo.room_for", lambda r: mutate.string(r), room_for, ()),
    ("netguard.check_url", _url, lambda u: check_url(u, POLICY), (BlockedAddress,)),
    ("netguard.redact", _url, redact, ()),
)
WEIGHTS = (30, 15, 10, 4, 2, 8, 8, 8, 4, 3, 2, 3, 2, 1, 4, 2)


def run(cases: range, seed: int, report: Report | None = None) -> Report:
    report = report or Report()
    started = time.monotonic()
    for case in cases:
        rng = random.Random(f"{seed}:{case}")
        name, make, call, documented = rng.choices(TARGETS, WEIGHTS)[0]
        report.cases += 1
        report.by_target[name] = report.by_target.get(name, 0) + 1
        data = make(rng)
        try:
            call(data)
        except documented:
            report.refused += 1
        except Exception as exc:  # the finding
            key = f"{type(exc).__name__}@{name}"
            if key not in report.findings:
                report.findings[key] = (f"seed {seed} case {case}: {exc!s:.200}\n"
                                        + "".join(traceback.format_exc(limit=-3)))
    report.seconds += time.monotonic() - started
    return report


def replay(seed: int, case: int) -> Any:
    """The input of one case, to turn a finding into a named test."""
    rng = random.Random(f"{seed}:{case}")
    name, make, _, _ = rng.choices(TARGETS, WEIGHTS)[0]
    return name, make(rng)
