"""Prompt audio on disk: files fetched over HTTP(S) and text spoken by espeak-ng, converted
once to what the bridge plays without resampling (16-bit mono PCM WAV at the clock rate).

HTTP files are cached with their validators (ETag, Last-Modified): within the response's
max-age (default 5 minutes) the cached copy is used as is; after that a conditional GET
revalidates it, so a 304 costs no download and no conversion. Concurrent requests for the
same prompt share one fetch.

What a URL returns is the application's (or anyone's) choice, so conversion is fenced: a WAV
header is checked before sox sees it (a 2 KB file that declares a 1 Hz rate would otherwise
become tens of MB), every converter runs with rlimits (output file size from `max_prompt_s`,
CPU, address space), a timeout and a bounded number of them at once, and is killed when the
caller hangs up. The cache is evicted least recently used past `cache_max_mb`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import re
import resource
import struct
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from gateway import USER_AGENT
from gateway.config import MediaConfig
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
# espeak-ng sizes a 64 MiB buffer file (ftruncate) whatever the text, so its file size limit
# is fixed; `say` text is at most 4000 characters, and the sox step after it applies
# max_prompt_s to the speech.
ESPEAK_FSIZE = 128 * 1024 * 1024
# Cache entries (the rest of the directory, e.g. the ringback tone, is never evicted).
_ENTRY = re.compile(r"(tts-)?[0-9a-f]{32}\.wav")
# WAV encodings whose decoded length follows from the header: PCM, IEEE float, A-law,
# mu-law, and WAVE_FORMAT_EXTENSIBLE (whose sub-format sox checks itself).
_WAV_FORMATS = {1: "pcm", 3: "float", 6: "alaw", 7: "mulaw", 0xFFFE: "extensible"}


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
        m = re.fullmatch(r"max-age=(\d{1,10})", d)
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


@dataclass(frozen=True)
class WavInfo:
    rate: int
    channels: int
    bits: int
    duration_s: float


def wav_info(body: bytes, max_prompt_s: float) -> WavInfo:
    """Check a WAV file's header before anything decodes it; raise MediaError if it is not
    something a telephone prompt can be. The duration counts the data bytes actually present
    (a header may declare 4 GB)."""
    fmt: tuple[int, int, int, int] | None = None
    pos, chunks = 12, 0
    while pos + 8 <= len(body):
        chunks += 1
        if chunks > 64:
            raise MediaError("WAV: too many chunks")
        cid, size = body[pos:pos + 4], struct.unpack_from("<I", body, pos + 4)[0]
        start = pos + 8
        if cid == b"fmt ":
            if size < 16 or start + 16 > len(body):
                raise MediaError("WAV: truncated fmt chunk")
            tag, channels, rate, _, _, bits = struct.unpack_from("<HHIIHH", body, start)
            fmt = (tag, channels, rate, bits)
        elif cid == b"data":
            if fmt is None:
                raise MediaError("WAV: data before fmt")
            tag, channels, rate, bits = fmt
            if tag not in _WAV_FORMATS:
                raise MediaError(f"WAV: unsupported encoding {tag:#x} "
                                 "(PCM, float, A-law or mu-law)")
            if not 8000 <= rate <= 192000:
                raise MediaError(f"WAV: sample rate {rate} Hz (8000 to 192000)")
            if not 1 <= channels <= 8:
                raise MediaError(f"WAV: {channels} channels (1 to 8)")
            if bits not in (8, 16, 24, 32, 64):
                raise MediaError(f"WAV: {bits} bits per sample")
            present = min(size, len(body) - start)
            duration = present / (rate * channels * bits / 8)
            if duration > max_prompt_s:
                raise MediaError(f"longer than {max_prompt_s:g} s")
            return WavInfo(rate, channels, bits, duration)
        pos = start + size + (size & 1)  # chunks are word-aligned
    raise MediaError("WAV: no data chunk")


def _limiter(fsize: int, cpu_s: int, memory: int) -> Callable[[], None]:
    """rlimits for a converter, set in the child between fork and exec: an output that grows
    past `fsize` kills it (SIGXFSZ) instead of filling the disk."""
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s + 1))
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    return apply


class MediaCache:
    def __init__(self, root: Path, http: aiohttp.ClientSession, rate: int,
                 timeout_s: float = 10.0, policy: AddressPolicy | None = None,
                 cfg: MediaConfig | None = None) -> None:
        self.root = root
        # Play URLs come from application responses: `http` should be a
        # netguard.guarded_session, and `policy` the same policy (for IP literals).
        self.http = http
        self.policy = policy or AddressPolicy()
        self.rate = rate
        self.timeout_s = timeout_s
        self.cfg = cfg or MediaConfig()
        self.root.mkdir(parents=True, exist_ok=True)
        # Per key: the lock and how many tasks hold or wait for it, so the dict holds only
        # keys in use (it grew by one entry per URL ever played).
        self._locks: dict[str, tuple[asyncio.Lock, list[int]]] = {}
        self._slots = asyncio.Semaphore(self.cfg.max_conversions)

    @contextlib.asynccontextmanager
    async def _locked(self, key: str) -> AsyncIterator[None]:
        lock, users = self._locks.setdefault(key, (asyncio.Lock(), [0]))
        users[0] += 1
        try:
            async with lock:
                yield
        finally:
            users[0] -= 1
            if users[0] == 0:
                del self._locks[key]

    # -- HTTP --------------------------------------------------------------------------
    async def fetch(self, url: str) -> Path:
        key = hashlib.sha256(url.encode()).hexdigest()[:32]
        async with self._locked(key):
            return await self._fetch(url, key)

    def _read_meta(self, path: Path) -> dict[str, Any]:
        """The cached entry's metadata; anything unreadable is a miss, never an error (a
        torn or corrupt file used to fail its URL for good)."""
        try:
            meta = json.loads(path.read_text())
            if isinstance(meta, dict) and isinstance(meta.get("fetched_at"), (int, float)) \
                    and isinstance(meta.get("max_age_s"), (int, float)):
                return meta
        except (OSError, ValueError):
            pass
        return {}

    def _write_meta(self, path: Path, meta: dict[str, Any]) -> None:
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(meta))
        tmp.replace(path)  # atomic: a crash leaves the old file or the new one

    async def _fetch(self, url: str, key: str) -> Path:
        wav, meta_path = self.root / f"{key}.wav", self.root / f"{key}.json"
        meta = self._read_meta(meta_path) if wav.exists() else {}
        if meta and time.time() - meta["fetched_at"] < meta["max_age_s"]:
            _touch(wav)
            return wav
        headers = {"User-Agent": USER_AGENT}
        if isinstance(meta.get("etag"), str):
            headers["If-None-Match"] = meta["etag"]
        if isinstance(meta.get("last_modified"), str):
            headers["If-Modified-Since"] = meta["last_modified"]
        timeout = aiohttp.ClientTimeout(total=self.timeout_s)
        limit = self.cfg.max_download_mb * 1024 * 1024
        try:
            check_url(url, self.policy)
            async with self.http.get(url, headers=headers, timeout=timeout,
                                     allow_redirects=False) as resp:
                if resp.status == 304 and meta:
                    meta.update(fetched_at=time.time(),
                                max_age_s=max_age_s(resp.headers.get("Cache-Control")))
                    self._write_meta(meta_path, meta)
                    log.info("media.revalidated", extra={"url": redact(url)})
                    _touch(wav)
                    return wav
                if resp.status != 200:
                    raise MediaError(f"{redact(url)}: HTTP {resp.status}")
                try:
                    body = await read_capped(resp, limit)
                except BodyTooLarge:
                    raise MediaError(f"{redact(url)}: larger than {limit} bytes") from None
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
        if kind == "wav":
            try:
                wav_info(body, self.cfg.max_prompt_s)
            except MediaError as exc:
                raise MediaError(f"{redact(url)}: {exc}") from None
        raw = self.root / f"{key}.download.{kind}"
        raw.write_bytes(body)
        try:
            await self._convert(raw, wav, kind)
        except MediaError as exc:
            raise MediaError(f"{redact(url)}: {exc}") from None
        finally:
            raw.unlink(missing_ok=True)
        self._write_meta(meta_path, {
            "url": url, "fetched_at": time.time(),
            "max_age_s": max_age_s(resp_headers.get("Cache-Control")),
            "etag": resp_headers.get("ETag"), "last_modified": resp_headers.get("Last-Modified"),
        })
        log.info("media.fetched", extra={"url": redact(url), "bytes": len(body)})
        self._evict(keep=wav)
        return wav

    # -- text to speech ----------------------------------------------------------------
    async def speak(self, text: str, voice: str | None) -> Path:
        key = "tts-" + hashlib.sha256(f"{voice or ''}\0{text}".encode()).hexdigest()[:32]
        wav = self.root / f"{key}.wav"
        async with self._locked(key):
            if wav.exists():
                _touch(wav)
                return wav
            raw = self.root / f"{key}.espeak.wav"
            args = ["espeak-ng", "-w", str(raw)]
            if voice:
                args += ["-v", voice]
            try:
                await self._run([*args, "--", text], ESPEAK_FSIZE)
                await self._convert(raw, wav, "wav")
            finally:
                raw.unlink(missing_ok=True)
            self._evict(keep=wav)
            return wav

    async def _convert(self, src: Path, dst: Path, kind: str) -> None:
        tmp = dst.with_suffix(".tmp.wav")
        try:
            await self._run(["sox", "-t", kind, str(src), "-r", str(self.rate), "-c", "1",
                             "-b", "16", "-e", "signed-integer", "-t", "wav", str(tmp)],
                            self.output_limit())
            tmp.replace(dst)  # atomic: a half-written prompt is never played
        finally:
            tmp.unlink(missing_ok=True)

    def output_limit(self) -> int:
        """Bytes of a converted prompt of `max_prompt_s` (16-bit mono), header included."""
        return int(self.cfg.max_prompt_s * self.rate * 2) + 4096

    async def _run(self, args: list[str], fsize: int) -> None:
        """Run a converter: at most `max_conversions` at once, killed on timeout and when
        the caller's task is cancelled (a hang-up), no file it writes larger than `fsize`."""
        timeout = self.cfg.convert_timeout_s
        limits = _limiter(fsize, int(timeout) + 1, self.cfg.convert_memory_mb * 1024 * 1024)
        async with self._slots:
            proc = await asyncio.create_subprocess_exec(
                *args, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE, preexec_fn=limits)
            try:
                _, err = await asyncio.wait_for(proc.communicate(), timeout)
            except TimeoutError:
                raise MediaError(f"{args[0]}: timed out after {timeout:g} s") from None
            finally:
                if proc.returncode is None:
                    proc.kill()
                    # shielded: a second cancellation must not leave a zombie behind
                    await asyncio.shield(proc.wait())
        if proc.returncode == -25:  # SIGXFSZ: the output reached RLIMIT_FSIZE
            raise MediaError(f"longer than {self.cfg.max_prompt_s:g} s")
        if proc.returncode == -24:  # SIGXCPU
            raise MediaError(f"{args[0]}: CPU limit")
        if proc.returncode != 0:
            # sox's message names our cache paths: keep it in the log, not in call.completed
            log.warning("media.convert_failed", extra={
                "command": args[0], "code": proc.returncode,
                "stderr": err.decode(errors="replace").strip()[:300]})
            raise MediaError(f"{args[0]} could not convert it")

    # -- eviction ----------------------------------------------------------------------
    def _evict(self, keep: Path) -> None:
        """Least recently used first (each hit touches the file), down to cache_max_mb."""
        entries: list[tuple[float, int, Path]] = []
        for p in self.root.iterdir():
            if _ENTRY.fullmatch(p.name) and p != keep:
                with contextlib.suppress(OSError):
                    st = p.stat()
                    entries.append((st.st_mtime, st.st_size, p))
        total = sum(size for _, size, _ in entries)
        with contextlib.suppress(OSError):
            total += keep.stat().st_size
        cap = self.cfg.cache_max_mb * 1024 * 1024
        evicted = 0
        for _, size, p in sorted(entries):
            if total <= cap:
                break
            # A prompt being played stays readable: the player holds it open, and unlinking
            # an open file on Linux frees it only when it is closed.
            p.unlink(missing_ok=True)
            p.with_suffix(".json").unlink(missing_ok=True)
            total -= size
            evicted += 1
        if evicted:
            log.info("media.evicted", extra={"files": evicted, "bytes_kept": total})


def _touch(path: Path) -> None:
    with contextlib.suppress(OSError):
        os.utime(path)
