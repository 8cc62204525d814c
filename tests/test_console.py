"""The live web console (`http.console`): its static files, its token-scoped snapshot stream,
and the page itself in Debian's headless chromium (Selenium): two callers in a room, the page
shows both and the talker, and its mute and hold buttons silence the talker at the other caller
(and unmute and resume bring it back)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import pytest

from gateway import console
from tests.audio import levels
from tests.harness import AppServer, GatewayProc, Phonebank, app_config

if TYPE_CHECKING:
    from selenium.webdriver.remote.webelement import WebElement

ADMIN = "admin-token-0123456789"
CUSTOMER = "cust-token-0123456789"  # customer cust_test: sees the test application's calls
OTHER = "other-token-0123456789"  # customer cust_other: sees nothing of them
TOKENS = {"tokens": [{"token": ADMIN}, {"token": CUSTOMER, "customer_id": "cust_test"},
                     {"token": OTHER, "customer_id": "cust_other"}]}
STATIC = Path(console.__file__).resolve().parent / "static"
HEARD_DB, SILENT_DB = -30.0, -45.0


# -- units ----------------------------------------------------------------------------------
def test_sse_frames_are_one_json_line() -> None:
    frame = console.sse("snapshot", {"from": "a\nb\r\n\ndata: x", "n": 1})
    text = frame.decode()
    assert text.startswith("event: snapshot\ndata: ") and text.endswith("\n\n")
    assert text.count("\n") == 3  # a caller's newline cannot end the event or forge a field
    assert json.loads(text.split("data: ", 1)[1]) == {"from": "a\nb\r\n\ndata: x", "n": 1}


def test_recent_view_keeps_the_timeline_tail() -> None:
    rec = {"id": "call_x", "timeline": [{"event": str(i)} for i in range(500)],
           "timeline_dropped": 7, "quality": None}
    view = console.recent_view(rec)
    assert len(view["timeline"]) == console.TIMELINE_TAIL
    assert view["timeline"][-1] == {"event": "499"} and view["timeline_total"] == 507


def test_static_files_are_self_contained_and_never_parse_data_as_html() -> None:
    page = (STATIC / "index.html").read_text()
    script = (STATIC / "console.js").read_text()
    style = (STATIC / "console.css").read_text()
    for text in (page, script, style):
        assert "http://" not in text and "https://" not in text  # no CDN: the box is offline
    for risky in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert risky not in script, risky
    assert "new EventSource" not in script  # it cannot send the token as a header
    assert "Authorization" in script and "sessionStorage" in script


# -- a real gateway ----------------------------------------------------------------------------
async def _get(gw: GatewayProc, path: str,
               token: str | None = None) -> tuple[int, dict[str, str], bytes]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession() as s, s.get(gw.http + path, headers=headers) as r:
        return r.status, dict(r.headers), await r.read()


async def _first_snapshot(resp: aiohttp.ClientResponse) -> dict[str, Any]:
    buf = b""
    while b"\n\n" not in buf:
        chunk = await asyncio.wait_for(resp.content.readany(), 10)
        assert chunk, f"stream ended: {resp.status} {buf!r}"
        buf += chunk
    frame = buf.split(b"\n\n", 1)[0].decode()
    assert frame.startswith("event: snapshot\n")
    return json.loads(frame.split("data: ", 1)[1])  # type: ignore[no-any-return]


@pytest.mark.sip
async def test_console_is_off_by_default(gateway: GatewayProc) -> None:
    assert (await _get(gateway, "/"))[0] == 404
    assert (await _get(gateway, "/v1/console/stream"))[0] == 404


def test_the_readme_matches_the_demo_config() -> None:
    """What README's "Watch it live" tells a newcomer after `make run` holds for the config
    `make run` uses: the console on at http://127.0.0.1:8080/, no tokens to type."""
    from gateway.config import load

    root = Path(__file__).resolve().parent.parent
    cfg = load(root / "configs" / "demo.yaml")
    assert cfg.http.console and (cfg.http.host, cfg.http.port) == ("127.0.0.1", 8080)
    assert cfg.api.tokens == ()
    readme = (root / "README.md").read_text()
    assert "open <http://127.0.0.1:8080/>" in readme
    assert "curl -s http://127.0.0.1:8080/metrics" in readme
    assert "--config configs/demo.yaml" in (root / "Makefile").read_text()


@pytest.mark.sip
async def test_with_the_demos_settings_no_token_is_needed(
    app: AppServer, gateway_factory: Callable[..., Awaitable[GatewayProc]],
) -> None:
    """The demo's settings (console on, no api.tokens, loopback): the page, its stream and
    /metrics all answer without a token, as README says."""
    gw = await gateway_factory([app_config(app)], http={"console": True})
    assert (await _get(gw, "/"))[0] == 200
    status, headers, body = await _get(gw, "/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain"), status
    assert b"minivoice_calls_active" in body
    async with aiohttp.ClientSession() as s, s.get(gw.http + "/v1/console/stream") as r:
        assert r.status == 200
        assert (await _first_snapshot(r))["rooms"] == []


@pytest.mark.sip
async def test_stream_follows_the_api_tokens_and_is_capped(
    app: AppServer, gateway_factory: Callable[..., Awaitable[GatewayProc]], phones: Phonebank,
) -> None:
    gw = await gateway_factory([app_config(app)], api=TOKENS, http={"console": True})
    status, headers, body = await _get(gw, "/")
    assert status == 200 and b"console.js" in body
    assert "default-src 'none'" in headers["Content-Security-Policy"]
    assert (await _get(gw, "/console/console.js"))[0] == 200
    assert (await _get(gw, "/console/../config.py"))[0] == 404
    assert (await _get(gw, "/v1/console/stream"))[0] == 401
    assert (await _get(gw, "/v1/console/stream", "not-a-token-0123456789"))[0] == 401

    app.answer = lambda p: {"actions": [{"conference": {"room": "seen"}}]}
    phones.call("a", gw.uri("1001"), tone_hz=440)
    await phones.wait("media", "a", timeout=15)
    async with aiohttp.ClientSession() as s:
        async def snap(token: str) -> dict[str, Any]:
            async with s.get(gw.http + "/v1/console/stream",
                             headers={"Authorization": f"Bearer {token}"}) as r:
                assert r.status == 200 and r.headers["Content-Type"] == "text/event-stream"
                return await _first_snapshot(r)

        async def until_in_room(token: str) -> dict[str, Any]:
            for _ in range(40):
                got = await snap(token)
                if got["rooms"]:
                    return got
                await asyncio.sleep(0.25)
            raise AssertionError("the room never appeared")

        mine = await until_in_room(CUSTOMER)
        (room,) = mine["rooms"]
        assert room["room"] == "seen" and len(room["participants"]) == 1
        part = room["participants"][0]
        assert part["from"] and 0 <= part["level"] <= 255 and part["muted"] is False
        assert [c["room"] for c in mine["calls"]] == ["seen"]
        assert "recent" in mine  # the first snapshot always carries the recent calls
        theirs = await snap(OTHER)
        assert theirs["rooms"] == [] and theirs["calls"] == [] and theirs["recent"] == []
        assert (await snap(ADMIN))["rooms"]

        # at most MAX_STREAMS at once; the next one is refused, and a closed one frees a slot
        # (the server notices a closed stream at its next write, within SNAPSHOT_S)
        await asyncio.sleep(3 * console.SNAPSHOT_S)
        open_streams = []
        for _ in range(console.MAX_STREAMS):
            r = await s.get(gw.http + "/v1/console/stream",
                            headers={"Authorization": f"Bearer {ADMIN}"})
            await _first_snapshot(r)
            open_streams.append(r)
        async with s.get(gw.http + "/v1/console/stream",
                         headers={"Authorization": f"Bearer {ADMIN}"}) as r:
            assert r.status == 429
        open_streams.pop().close()
        for _ in range(40):
            async with s.get(gw.http + "/v1/console/stream",
                             headers={"Authorization": f"Bearer {ADMIN}"}) as r:
                if r.status == 200:
                    break
            await asyncio.sleep(0.25)
        else:
            raise AssertionError("a closed stream never freed its slot")
        for r in open_streams:
            r.close()
    phones.hangup("a")
    await phones.wait("ended", "a")


# -- the page in a real browser ----------------------------------------------------------------
@contextlib.contextmanager
def chromium() -> Iterator[Any]:
    """Headless chromium through Debian's chromedriver; skips (with the reason) only when it
    cannot start."""
    chrome, driver_bin = shutil.which("chromium"), shutil.which("chromedriver")
    if not chrome or not driver_bin:
        pytest.skip("chromium or chromedriver not installed (apt: chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="minivoice-chromium-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = chrome
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--no-first-run", "--disable-extensions", f"--user-data-dir={profile}",
                "--window-size=1400,1000"):
        opts.add_argument(arg)
    try:
        # An explicit driver path: Selenium Manager must not try to download one.
        driver = webdriver.Chrome(service=Service(driver_bin), options=opts)
    except Exception as exc:
        shutil.rmtree(profile, ignore_errors=True)
        pytest.skip(f"chromium could not start: {type(exc).__name__}: {exc}"[:500])
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


async def _until(fn: Callable[[], Any], timeout: float = 15.0, what: str = "") -> Any:
    """Poll a blocking browser check from the event loop (the phones need the loop)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = await asyncio.to_thread(fn)
        if result:
            return result
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"page never showed {what}")
        await asyncio.sleep(0.2)


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    with chromium() as driver:
        yield driver


@pytest.mark.sip
async def test_the_page_shows_the_room_and_its_mute_and_hold_buttons_silence_the_talker(
    app: AppServer, gateway_factory: Callable[..., Awaitable[GatewayProc]], phones: Phonebank,
    tmp_path: Path, browser: Any,
) -> None:
    from selenium.webdriver.common.by import By

    gw = await gateway_factory([app_config(app)], api=TOKENS, http={"console": True})
    app.answer = lambda p: {"actions": [{"conference": {"room": "console-room"}}]}
    talker, listener = "+15550000001", "+15550000002"
    rec = tmp_path / "listener.wav"
    phones.call("talker", gw.uri("1001"), tone_hz=440, **{"from": talker})
    phones.call("listener", gw.uri("1001"), tone_hz=0, record=str(rec), **{"from": listener})
    for cid in ("talker", "listener"):
        await phones.wait("media", cid, timeout=15)

    d = browser
    await asyncio.to_thread(d.get, gw.http + "/")

    def log_in() -> None:
        d.find_element(By.ID, "token").send_keys(CUSTOMER)
        d.find_element(By.ID, "connect").click()

    await asyncio.to_thread(log_in)

    def rows() -> dict[str, WebElement]:
        found = d.find_elements(By.CSS_SELECTOR, ".room[data-room='console-room'] .participant")
        return {r.find_element(By.CSS_SELECTOR, ".who").text: r for r in found}

    shown = await _until(lambda: (r := rows()) and len(r) == 2 and r, what="both callers")
    assert set(shown) == {talker, listener}
    assert await asyncio.to_thread(lambda: d.find_element(By.ID, "status").text) == "live"

    def talking(who: str) -> bool:
        row = rows().get(who)
        return row is not None and row.get_attribute("data-talking") == "true"

    await _until(lambda: talking(talker), what="the talker talking")
    assert not await asyncio.to_thread(talking, listener)  # silence is not talk

    # Each button is clicked on the talker's row, then the listener's recording is measured
    # over a window after the click: Mute silences the talker, Unmute brings it back, Hold
    # silences it again (held: heard by nobody), Resume brings it back. A window starts 0.8 s
    # after the click (the PATCH and the SIP thread's relink) and lasts 1.5 s.
    loop = asyncio.get_running_loop()
    heard_since = float(phones.find("media", "listener")["at"])  # type: ignore[index]
    await asyncio.sleep(max(0.0, heard_since + 2.5 - loop.time()))
    steps = (("mute", "data-muted", "true", "Unmute", False),
             ("mute", "data-muted", "false", "Mute", True),
             ("hold", "data-held", "true", "Resume", False),
             ("hold", "data-held", "false", "Hold", True))
    clicked: list[tuple[str, float, bool]] = [("start", heard_since + 2.5, True)]
    for button, attr, value, label, heard in steps:
        at = loop.time()
        await asyncio.to_thread(
            lambda b: rows()[talker].find_element(By.CSS_SELECTOR, f"button.{b}").click(), button)

        def shows(a: str = attr, v: str = value) -> bool:
            return rows()[talker].get_attribute(a) == v
        await _until(shows, what=f"the talker's {attr}={value}")
        assert await asyncio.to_thread(
            lambda b: rows()[talker].find_element(By.CSS_SELECTOR, f"button.{b}").text, button
        ) == label
        clicked.append((f"{button}->{value}", at, heard))
        await asyncio.sleep(max(0.0, at + 2.5 - loop.time()))
    await phones.hangup_all(("talker", "listener"))

    # the listener heard the talker before the first click, and after each click as expected
    windows = [(what, max(0.3, at - heard_since - 2.0), at - heard_since - 0.2, heard)
               if what == "start" else
               (what, at - heard_since + 0.8, at - heard_since + 2.3, heard)
               for what, at, heard in clicked]
    for what, start_s, end_s, heard in windows:
        got = levels(rec, 440, start_s=start_s, end_s=end_s)[440]
        print(f"listener's 440 Hz after {what}: {got:.1f} dBFS")
        assert (got > HEARD_DB) if heard else (got < SILENT_DB), (what, got)

    # the finished calls appear under recent calls, with their quality
    def recent_mos() -> list[str]:
        cells = d.find_elements(By.CSS_SELECTOR, "#recent tr.call td.mos")
        return [c.text for c in cells if c.text not in ("", "\u2013")]  # en dash: no MOS

    assert len(await _until(lambda: len(recent_mos()) >= 2 and recent_mos(),
                            what="two recent calls with a MOS")) >= 2
    await asyncio.to_thread(
        lambda: d.find_element(By.CSS_SELECTOR, "#recent tr.call").click())
    detail = await _until(lambda: d.find_elements(By.CSS_SELECTOR, "#recent tr.detail pre")
                          and d.find_element(By.CSS_SELECTOR, "#recent tr.detail pre").text,
                          what="a call's timeline")
    assert "call.completed" in detail and "quality:" in detail


def test_participant_view_shows_mute_and_hold() -> None:
    from types import SimpleNamespace

    member = SimpleNamespace(muted=True, held=False, end_on_exit=False, joined_at=0.0)
    room = SimpleNamespace(members={"call_a": member})
    view = console.participant_view(room, "call_a", 40, "alice", 10)  # type: ignore[arg-type]
    assert view["talking"] and view["muted"] and view["hold"] is False
    member.held = True
    assert console.participant_view(room, "call_a", 3, None, 10)["hold"] is True  # type: ignore[arg-type]


async def test_snapshot_is_bounded_however_many_rooms_and_calls() -> None:
    """A busy gateway's snapshot shows the first rooms and calls with their totals, and asks
    the SIP thread for the levels of the participants it shows only."""
    from types import SimpleNamespace

    from aiohttp import web

    from gateway import keys
    from gateway.call.record import CallRecord
    from gateway.config import Config
    from media.rooms import RoomKey

    def room(i: int, size: int) -> Any:
        members = {f"call_{i}_{j}": SimpleNamespace(muted=False, held=False, end_on_exit=False,
                                                     joined_at=0.0) for j in range(size)}
        return SimpleNamespace(key=RoomKey("cust", f"r{i:04d}"), created_at=0.0,
                               members=members)

    asked: list[int] = []

    async def levels(ids: tuple[str, ...]) -> dict[str, int]:
        asked.append(len(ids))
        return {cid: 50 for cid in ids}

    def session(i: int) -> Any:
        rec = CallRecord(call_id=f"call_{i}", customer_id="cust", application_id="a",
                         direction="inbound", from_user=f"+1{i}", to="1", sip={},
                         created_at=0.0, timeline=[{"event": "x"}] * 500)
        return SimpleNamespace(rec=rec, customer_id="cust")

    sessions = [session(i) for i in range(1000)]

    class Calls:
        def __iter__(self) -> Any:
            return iter(sessions)

        def get(self, cid: str) -> Any:
            return None

    app = web.Application()
    rooms: list[Any]  # filled below: the fake's live() reads it when the snapshot is taken
    for key, value in ((keys.ROOMS, SimpleNamespace(live=lambda: rooms)),
                       (keys.CALLS, Calls()), (keys.ENGINE, SimpleNamespace(levels=levels)),
                       (keys.CONFIG, Config(applications=()))):
        # the pairs mix four AppKey types (no one _T for the loop), and the values are
        # duck-typed fakes of the services, not of the keys' types
        app[key] = value  # type: ignore[misc]
    rooms = [room(i, 5) for i in range(120)]
    snap = await console.snapshot(app, (True, None))
    assert len(snap["rooms"]) == console.MAX_ROOMS and snap["rooms_total"] == 120
    assert len(snap["calls"]) == console.MAX_CALLS and snap["calls_total"] == 1000
    assert "timeline" not in snap["calls"][0]  # summaries, not full records
    assert asked[-1] == console.MAX_ROOMS * 5
    rooms = [room(0, 3000), room(1, 2)]
    snap = await console.snapshot(app, (True, None))
    (big,) = snap["rooms"]  # the first room is shown even alone over the cap, then no more
    assert big["size"] == 3000 and len(big["participants"]) == console.MAX_PARTICIPANTS
    assert asked[-1] == console.MAX_PARTICIPANTS
    assert (await console.snapshot(app, (False, "someone-else")))["rooms"] == []
