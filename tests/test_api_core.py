"""The REST API's shared parsing (gateway.api.core, pure) with hostile input, and the error
bodies the resources answer with over real HTTP on loopback (a real SQLite store, real rooms;
no SIP): the same codes and messages the API gave before it was split by resource."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import aiohttp
import pytest
from aiohttp import web

from gateway import api, keys
from gateway.api.calls import listing
from gateway.api.core import ApiError, empty_body, invalid_body, json_body, query_limit
from gateway.conferences import Conferences
from gateway.config import Application, Config
from gateway.recordings import RecordingRefused
from gateway.store import Store
from gateway.strict import Detail, ValidationError
from media.rooms import MemberOptions, RoomKey
from tests.httpkit import serve

APP = Application(id="app_t", customer_id="c1", answer_url="http://127.0.0.1:9/answer",
                  secret="s" * 16)


def refused(raw: bytes, fn: Any) -> ApiError:
    with pytest.raises(ApiError) as info:
        fn(raw)
    return info.value


# -- pure ---------------------------------------------------------------------------------
def test_json_body_refuses_what_is_not_json() -> None:
    assert json_body(b'{"a": [1, 2]}') == {"a": [1, 2]}
    for raw in (b"", b"{", b"\xff\xfe", b"[" * 200_000, b'{"a": 1}}', b"NaN-ish", b"NaN",
                b"[1e999]", b"-" + b"9" * 4301, b'{"a": 1, "b": {"c": 1, "c": 1}}'):
        exc = refused(raw, json_body)
        assert (exc.status, exc.code, exc.message) == \
            (400, "invalid_body", "body must be JSON"), raw[:20]
        assert exc.details is not None and len(exc.details) == 1, raw[:20]
        assert exc.details[0]["reason"].startswith("malformed JSON: "), raw[:20]


def test_an_empty_body_is_empty_or_an_empty_object() -> None:
    for raw in (b"", b"  \r\n", b"{}", b" { } "):
        empty_body(raw)
    for raw in (b"[]", b"null", b'{"a": 1}', b"x", b"\xff", b"{" * 200_000):
        exc = refused(raw, empty_body)
        assert (exc.status, exc.code, exc.message) == \
            (400, "invalid_body", "body must be empty or {}"), raw[:20]


def test_invalid_body_keeps_every_detail() -> None:
    exc = invalid_body(ValidationError([Detail("to", "is required"),
                                        Detail("from", "is required")]), "invalid request")
    assert (exc.status, exc.code, exc.message) == (400, "invalid_body", "invalid request")
    assert exc.details == [{"path": "to", "reason": "is required"},
                           {"path": "from", "reason": "is required"}]


def test_listing_and_its_limit() -> None:
    assert listing({}) is None and listing({"state": "live"}) is None
    assert listing({"state": "live", "limit": "nonsense"}) is None  # not read for live calls
    assert listing({"state": "ended"}) == 50
    assert listing({"state": "ended", "limit": "1"}) == 1
    assert listing({"state": "ended", "limit": " 1000 "}) == 1000
    assert query_limit({}, default=7, most=9) == 7
    for limit, message in (("0", "limit must be 1 to 1000"), ("1001", "limit must be 1 to 1000"),
                           ("-1", "limit must be 1 to 1000"), ("9" * 5000, None),
                           ("1e3", "limit must be an integer"), ("", "limit must be an integer"),
                           ("0x10", "limit must be an integer")):
        with pytest.raises(ApiError) as info:
            listing({"state": "ended", "limit": limit})
        assert (info.value.status, info.value.code) == (400, "invalid_query")
        if message is not None:
            assert info.value.message == message, limit
    for state in ("LIVE", "", "ended " * 1000):
        with pytest.raises(ApiError, match="state must be live or ended"):
            listing({"state": state})


# -- over HTTP ----------------------------------------------------------------------------
class Recordings:
    """Refuses every start for the reason it is given (the real ones need a mixer)."""

    def __init__(self) -> None:
        self.reason = "disk_full"
        self.active: dict[str, Any] = {}

    async def start(self, key: RoomKey, app: Application, *, by: str) -> Any:
        raise RecordingRefused(self.reason, f"refused: {self.reason}")


@pytest.fixture
async def base(tmp_path: Path) -> AsyncIterator[tuple[str, Recordings]]:
    conferences = Conferences(lambda change: None)
    joined = asyncio.create_task(conferences.join(RoomKey("c1", "r1"), "call_a",
                                                  MemberOptions()))
    await asyncio.sleep(0)
    recordings = Recordings()
    store = Store(tmp_path / "gw.db")
    app = web.Application(client_max_size=1024 * 1024)
    app[keys.CONFIG] = Config(applications=(APP,))  # no tokens: open, as on loopback
    app[keys.ROOMS] = conferences
    app[keys.STORE] = store
    app[keys.CALLS] = cast(Any, {"call_a": SimpleNamespace(app=APP)})
    app[keys.RECORDINGS] = cast(Any, recordings)
    api.setup(app)
    runner, port = await serve(app)
    try:
        yield f"http://127.0.0.1:{port}", recordings
    finally:
        await runner.cleanup()
        joined.cancel()
        store.close()


async def call(method: str, url: str, body: bytes | None = None) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as s, s.request(method, url, data=body) as r:
        return r.status, await r.json()


async def test_the_error_bodies_over_http(base: tuple[str, Recordings]) -> None:
    url, recordings = base
    cases: list[tuple[str, str, bytes | None, int, dict[str, Any]]] = [
        ("GET", "/v1/calls?state=ended&limit=0", None, 400,
         {"code": "invalid_query", "message": "limit must be 1 to 1000"}),
        ("GET", "/v1/calls?state=ended&limit=x", None, 400,
         {"code": "invalid_query", "message": "limit must be an integer"}),
        ("GET", "/v1/calls?state=gone", None, 400,
         {"code": "invalid_query", "message": "state must be live or ended"}),
        ("POST", "/v1/calls", b"\xff" * 100, 400,
         {"code": "invalid_body", "message": "body must be JSON",
          "details": [{"path": "", "reason": "malformed JSON: not UTF-8"}]}),
        ("POST", "/v1/calls", b"[" * 100_000, 400,
         {"code": "invalid_body", "message": "body must be JSON",
          "details": [{"path": "", "reason": "malformed JSON: nested too deeply"}]}),
        # json.loads raises a bare ValueError for this one: it was a 500
        ("POST", "/v1/calls", b'{"to": ' + b"1" * 5000 + b"}", 400,
         {"code": "invalid_body", "message": "body must be JSON",
          "details": [{"path": "", "reason": "malformed JSON: a number too long"}]}),
        ("PATCH", "/v1/conferences/r1/participants/call_a", b'{"muted": true, "muted": false}',
         400, {"code": "invalid_body", "message": "invalid body",
               "details": [{"path": "", "reason": "malformed JSON: duplicate key 'muted'"}]}),
        ("POST", "/v1/conferences/r1/announcements", b'{"say": {"text": "x", "loop": NaN}}',
         400, {"code": "invalid_body", "message": "invalid body",
               "details": [{"path": "", "reason": "malformed JSON: NaN is not JSON"}]}),
        ("POST", "/v1/calls", b"[]", 400,
         {"code": "invalid_body", "message": "invalid request",
          "details": [{"path": "", "reason": "must be a JSON object"}]}),
        ("POST", "/v1/conferences/r1/recordings", b"[]", 400,
         {"code": "invalid_body", "message": "body must be empty or {}"}),
        ("POST", "/v1/conferences/nope/recordings", b"", 404,
         {"code": "not_found", "message": "no room nope"}),
        ("PATCH", "/v1/conferences/r1/participants/call_a", b"{}", 400,
         {"code": "invalid_body", "message": "invalid body",
          "details": [{"path": "", "reason": "give at least one of muted, hold, speak_to"}]}),
        ("PATCH", "/v1/conferences/r1/participants/call_b", b"{}", 404,
         {"code": "not_found", "message": "call_b is not in room r1"}),
        ("GET", "/v1/recordings/" + "r" * 65, None, 404,
         {"code": "not_found", "message": "no recording " + "r" * 65}),
        ("GET", "/v1/nothing", None, 404, {"code": "http_error", "message": "Not Found"}),
        ("PUT", "/v1/calls", b"{}", 405,
         {"code": "http_error", "message": "Method Not Allowed"}),
    ]
    for method, path, body, status, error in cases:
        assert await call(method, url + path, body) == (status, {"error": error}), path
    for reason, status, code in (("disk_full", 507, "disk_full"),
                                 ("limit", 429, "too_many_recordings"),
                                 ("no_room", 404, "not_found"),
                                 ("other", 500, "recording_failed")):
        recordings.reason = reason
        got = await call("POST", url + "/v1/conferences/r1/recordings", b"{}")
        assert got == (status, {"error": {"code": code, "message": f"refused: {reason}"}})
    assert await call("GET", url + "/v1/calls?state=ended&limit=1000") == (200, {"calls": []})
    status, doc = await call("GET", url + "/v1/openapi.json")
    assert status == 200 and doc == api.openapi_document()
