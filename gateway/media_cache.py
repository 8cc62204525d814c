"""Prompt audio on disk: files fetched over HTTP(S) and text spoken by espeak-ng, converted
once to what the bridge plays without resampling (16-bit mono PCM WAV at the clock rate).

HTTP files are cached with their validators (ETag, Last-Modified): within the response's
max-age (default 5 minutes) the cached copy is used as is; after that a conditional GET
revalidates it, so a 304 costs no download and no conversion. Concurrent requests for the
same prompt share one fetch.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import time
from pathlib import Path
from typing import Any

import aiohttp

from gateway import USER_AGENT
from gateway.netguard import (
    AddressPolicy,
    BlockedAddress,
    BodyTooLarge,
    blocked_cause,
    check_url,
    read_capped,
    redact,
)

log = logging.getLogger("minivoice.media")

DEFAULT_MAX_AGE_S = 300.0
MAX_DOWNLOAD_BYTES = 20 * 1024 * 1024


class MediaError(Exception):
    pass


def max_age_s(cache_control: str | None) -> float:
    """Seconds a response may be used without revalidation, from Cache-Control."""
    if not cache_control:
        return DEFAULT_MAX_AGE_S
    directives = [d.strip().lower() for d in cache_control.split(",")]
    if "no-cache" in directives or "no-store" in directives:
        return 0.0
    for d in directives:
        m = re.fullmatch(r"max-age=(\d+)", d)
        if m:
            return float(m.group(1))
    return DEFAULT_MAX_AGE_S


def audio_kind(body: bytes) -> str | None:
    """WAV or MP3, by content (servers' Content-Type is often generic)."""
    if body[:4] == b"RIFF" and body[8:12] == b"WAVE":
        return "wav"
    if body[:3] == b"ID3" or (len(body) > 1 and body[0] == 0xFF and body[1] & 0xE0 == 0xE0):
        return "mp3"
    return None


class MediaCache:
    def __init__(self, root: Path, http: aiohttp.ClientSession, rate: int,
                 timeout_s: float = 10.0, policy: AddressPolicy | None = None) -> None:
        self.root = root
        # Play URLs come from application responses: `http` should be a
        # netguard.guarded_session, and `policy` the same policy (for IP literals).
        self.http = http
        self.policy = policy or AddressPolicy()
        self.rate = rate
        self.timeout_s = timeout_s
        self.root.mkdir(parents=True, exist_ok=True)
        self._locks: dict[str, asyncio.Lock] = {}

    def _lock(self, key: str) -> asyncio.Lock:
        return self._locks.setdefault(key, asyncio.Lock())

    # -- HTTP --------------------------------------------------------------------------
    async def fetch(self, url: str) -> Path:
        key = hashlib.sha256(url.encode()).hexdigest()[:32]
        async with self._lock(key):
            return await self._fetch(url, key)

    async def _fetch(self, url: str, key: str) -> Path:
        wav, meta_path = self.root / f"{key}.wav", self.root / f"{key}.json"
        meta: dict[str, Any] = {}
        if wav.exists() and meta_path.exists():
            meta = json.loads(meta_path.read_text())
            if time.time() - meta["fetched_at"] < meta["max_age_s"]:
                return wav
        headers = {"User-Agent": USER_AGENT}
        if meta.get("etag"):
            headers["If-None-Match"] = meta["etag"]
        if meta.get("last_modified"):
            headers["If-Modified-Since"] = meta["last_modified"]
        timeout = aiohttp.ClientTimeout(total=self.timeout_s)
        try:
            check_url(url, self.policy)
            async with self.http.get(url, headers=headers, timeout=timeout,
                                     allow_redirects=False) as resp:
                if resp.status == 304 and wav.exists():
                    meta.update(fetched_at=time.time(),
                                max_age_s=max_age_s(resp.headers.get("Cache-Control")))
                    meta_path.write_text(json.dumps(meta))
                    log.info("media.revalidated", extra={"url": redact(url)})
                    return wav
                if resp.status != 200:
                    raise MediaError(f"{redact(url)}: HTTP {resp.status}")
                try:
                    body = await read_capped(resp, MAX_DOWNLOAD_BYTES)
                except BodyTooLarge:
                    raise MediaError(
                        f"{redact(url)}: larger than {MAX_DOWNLOAD_BYTES} bytes") from None
                resp_headers = resp.headers
        except (BlockedAddress, aiohttp.ClientError, TimeoutError) as exc:
            if blocked_cause(exc) is not None:
                log.warning("media.refused", extra={"url": redact(url),
                                                    "reason": str(blocked_cause(exc))})
                raise MediaError(f"{redact(url)}: address not allowed") from None
            if wav.exists():  # serve stale rather than fail the caller
                log.warning("media.stale", extra={"url": redact(url), "error": str(exc)})
                return wav
            raise MediaError(f"{redact(url)}: {type(exc).__name__}") from None
        kind = audio_kind(body)
        if kind is None:
            raise MediaError(f"{redact(url)}: neither WAV nor MP3")
        raw = self.root / f"{key}.download.{kind}"
        raw.write_bytes(body)
        await self._convert(raw, wav)
        raw.unlink()
        meta_path.write_text(json.dumps({
            "url": url, "fetched_at": time.time(),
            "max_age_s": max_age_s(resp_headers.get("Cache-Control")),
            "etag": resp_headers.get("ETag"), "last_modified": resp_headers.get("Last-Modified"),
        }))
        log.info("media.fetched", extra={"url": redact(url), "bytes": len(body)})
        return wav

    # -- text to speech ----------------------------------------------------------------
    async def speak(self, text: str, voice: str | None) -> Path:
        key = "tts-" + hashlib.sha256(f"{voice or ''}\0{text}".encode()).hexdigest()[:32]
        wav = self.root / f"{key}.wav"
        async with self._lock(key):
            if wav.exists():
                return wav
            raw = self.root / f"{key}.espeak.wav"
            args = ["espeak-ng", "-w", str(raw)]
            if voice:
                args += ["-v", voice]
            await _run([*args, "--", text])
            await self._convert(raw, wav)
            raw.unlink()
            return wav

    async def _convert(self, src: Path, dst: Path) -> None:
        tmp = dst.with_suffix(".tmp.wav")
        await _run(["sox", str(src), "-r", str(self.rate), "-c", "1", "-b", "16",
                    "-e", "signed-integer", str(tmp)])
        tmp.replace(dst)  # atomic: a half-written prompt is never played


async def _run(args: list[str]) -> None:
    proc = await asyncio.create_subprocess_exec(
        *args, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    _, err = await proc.communicate()
    if proc.returncode != 0:
        raise MediaError(f"{args[0]} failed: {err.decode(errors='replace').strip()[:300]}")
