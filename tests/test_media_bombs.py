"""Issue 12 #2: prompt media that tries to hurt the gateway. Real HTTP on loopback, real sox
and espeak-ng, real subprocesses."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from gateway.config import MediaConfig
from gateway.media_cache import MediaCache, MediaError, wav_info
from gateway.netguard import AddressPolicy
from tests.httpkit import Server, crafted_wav, in_pieces, wav_bytes, wav_seconds

LOOPBACK = AddressPolicy.from_config(["127.0.0.0/8"])


def cache_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.iterdir() if p.is_file())


# -- the header is checked before sox sees it ---------------------------------------------
async def test_a_1_hz_wav_is_refused_before_conversion(
        server: Server, http: aiohttp.ClientSession, tmp_path: Path) -> None:
    # 2 KB at a declared 1 Hz: 2048 s of audio, 32 MB once resampled to 8 kHz
    server.routes["/bomb.wav"] = in_pieces(crafted_wav(1, bytes(range(256)) * 8))
    cache = MediaCache(tmp_path, http, 8000, policy=LOOPBACK)
    with pytest.raises(MediaError, match="sample rate 1 Hz"):
        await cache.fetch(server.url + "/bomb.wav")
    assert cache_bytes(tmp_path) < 10_000


def test_wav_header_rules() -> None:
    second = bytes(8000)
    assert wav_info(crafted_wav(8000, second), 600).duration_s == pytest.approx(1.0)
    # a header may declare 4 GB: what counts is what is there
    assert wav_info(crafted_wav(8000, second, declared=0xFFFFFFF0), 600).duration_s \
        == pytest.approx(1.0)
    cases = [
        (crafted_wav(8000, second * 3), 2, "longer than 2 s"),
        (crafted_wav(8000, second, channels=200), 600, "200 channels"),
        (crafted_wav(8000, second, bits=4, tag=0x11), 600, "unsupported encoding"),
        (crafted_wav(400000, second), 600, "sample rate"),
        (crafted_wav(8000, second, bits=12), 600, "12 bits"),
        (b"RIFF\0\0\0\0WAVEfmt \x02\0\0\0\0\0", 600, "truncated fmt"),
        (b"RIFF\0\0\0\0WAVE" + b"junk\0\0\0\0" * 100, 600, "too many chunks"),
        (b"RIFF\0\0\0\0WAVEdata\0\0\0\0", 600, "data before fmt"),
        (b"RIFF\0\0\0\0WAVE", 600, "no data chunk"),
    ]
    for body, max_s, reason in cases:
        with pytest.raises(MediaError, match=reason):
            wav_info(body, max_s)


async def test_an_mp3_longer_than_the_limit_is_cut_off_by_the_file_size_limit(
        server: Server, http: aiohttp.ClientSession, tmp_path: Path) -> None:
    mp3 = tmp_path / "long.mp3"
    subprocess.run(["sox", "-n", "-r", "8000", "-c", "1", str(mp3), "synth", "5", "sine",
                    "440"], check=True)
    server.routes["/long.mp3"] = in_pieces(mp3.read_bytes())
    server.routes["/short.mp3"] = in_pieces(mp3.read_bytes())
    root = tmp_path / "cache"
    cache = MediaCache(root, http, 8000, policy=LOOPBACK, cfg=MediaConfig(max_prompt_s=2))
    with pytest.raises(MediaError, match="longer than 2 s"):
        await cache.fetch(server.url + "/long.mp3")
    assert not list(root.glob("*.wav")), "a partial conversion was kept"
    roomy = MediaCache(root, http, 8000, policy=LOOPBACK, cfg=MediaConfig(max_prompt_s=6))
    assert wav_seconds(await roomy.fetch(server.url + "/short.mp3")) > 4.9


async def test_long_speech_is_refused(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    cache = MediaCache(tmp_path, http, 8000, cfg=MediaConfig(max_prompt_s=1))
    with pytest.raises(MediaError, match="longer than 1 s"):
        await cache.speak("This sentence takes well over one second to say. " * 3, None)
    assert not list(tmp_path.glob("*.wav"))


# -- converters: rlimits, timeout, cancellation, concurrency ------------------------------
async def test_converters_run_with_rlimits(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    out = tmp_path / "limits.json"
    cfg = MediaConfig(max_prompt_s=10, convert_timeout_s=5, convert_memory_mb=256)
    cache = MediaCache(tmp_path, http, 8000, cfg=cfg)
    probe = ("import json, resource, sys; json.dump({n: resource.getrlimit(getattr("
             "resource, n))[0] for n in ('RLIMIT_FSIZE', 'RLIMIT_CPU', 'RLIMIT_AS')}, "
             "open(sys.argv[1], 'w'))")
    await cache._run([sys.executable, "-c", probe, str(out)], cache.output_limit())
    limits = json.loads(out.read_text())
    assert limits["RLIMIT_FSIZE"] == 10 * 8000 * 2 + 4096
    assert limits["RLIMIT_CPU"] == 6
    assert limits["RLIMIT_AS"] == 256 * 1024 * 1024


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_a_hung_converter_is_killed_on_timeout(
        tmp_path: Path, http: aiohttp.ClientSession) -> None:
    pid_file = tmp_path / "pid"
    cache = MediaCache(tmp_path, http, 8000, cfg=MediaConfig(convert_timeout_s=1))
    started = time.monotonic()
    with pytest.raises(MediaError, match="timed out"):
        await cache._run(["sh", "-c", f"echo $$ > {pid_file}; exec sleep 60"], 1 << 20)
    assert time.monotonic() - started < 3
    assert not _alive(int(pid_file.read_text()))


async def test_a_converter_is_killed_when_the_caller_hangs_up(
        tmp_path: Path, http: aiohttp.ClientSession) -> None:
    pid_file = tmp_path / "pid"
    cache = MediaCache(tmp_path, http, 8000)
    task = asyncio.create_task(
        cache._run(["sh", "-c", f"echo $$ > {pid_file}; exec sleep 60"], 1 << 20))
    while not pid_file.exists() or not pid_file.read_text().strip():
        await asyncio.sleep(0.02)
    task.cancel()  # what a hang-up does to the call's task
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not _alive(int(pid_file.read_text()))


async def test_conversions_are_bounded(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    log = tmp_path / "log"
    cache = MediaCache(tmp_path, http, 8000, cfg=MediaConfig(max_conversions=2))
    script = f"echo + >> {log}; sleep 0.3; echo - >> {log}"
    await asyncio.gather(*(cache._run(["sh", "-c", script], 1 << 20) for _ in range(6)))
    running = peak = 0
    for line in log.read_text().split():
        running += 1 if line == "+" else -1
        peak = max(peak, running)
    assert peak == 2


# -- the cache: atomic metadata, eviction, no lock per URL forever ------------------------
async def test_corrupt_metadata_is_a_miss_not_a_permanent_failure(
        server: Server, http: aiohttp.ClientSession, tmp_path: Path) -> None:
    server.routes["/a.wav"] = in_pieces(wav_bytes(0.5), headers={"ETag": '"a"'})
    cache = MediaCache(tmp_path, http, 8000, policy=LOOPBACK)
    url = server.url + "/a.wav"
    path = await cache.fetch(url)
    (meta,) = tmp_path.glob("*.json")
    for torn in ('{"url": "x", "fetched_', "", "[]", '{"fetched_at": "x", "max_age_s": 1}'):
        meta.write_text(torn)
        assert await cache.fetch(url) == path
        assert json.loads(meta.read_text())["etag"] == '"a"'
    assert server.hits.count("/a.wav") == 5
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]


async def test_least_recently_used_prompts_are_evicted(
        server: Server, http: aiohttp.ClientSession, tmp_path: Path) -> None:
    for name in "abc":  # 30 s at 8 kHz: 480 KB each once converted
        server.routes[f"/{name}.wav"] = in_pieces(wav_bytes(30.0))
    cache = MediaCache(tmp_path, http, 8000, policy=LOOPBACK, cfg=MediaConfig(cache_max_mb=1))
    a = await cache.fetch(server.url + "/a.wav")
    await asyncio.sleep(0.02)
    b = await cache.fetch(server.url + "/b.wav")
    await asyncio.sleep(0.02)
    assert await cache.fetch(server.url + "/a.wav") == a  # a hit: a is now the most recent
    await asyncio.sleep(0.02)
    c = await cache.fetch(server.url + "/c.wav")
    assert a.exists() and c.exists() and not b.exists()
    assert not b.with_suffix(".json").exists()
    assert cache_bytes(tmp_path) <= 1024 * 1024
    assert cache._locks == {}, "a lock per URL ever played"


async def test_locks_are_released_after_a_cancelled_fetch(
        server: Server, http: aiohttp.ClientSession, tmp_path: Path) -> None:
    server.routes["/slow.wav"] = in_pieces(wav_bytes(1.0), pieces=4, gap_s=1.0)
    cache = MediaCache(tmp_path, http, 8000, policy=LOOPBACK)
    tasks = [asyncio.create_task(cache.fetch(server.url + "/slow.wav")) for _ in range(3)]
    await asyncio.sleep(0.3)
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert cache._locks == {}
