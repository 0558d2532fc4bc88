"""Audio in: an uploaded file, checked, then decoded by FFmpeg in a subprocess into a WAV a job can read.

Nothing here trusts the file. Before download: its name and type, and its size as the host states it.
After: ``ffprobe`` (a time limit; only the demuxers of the accepted types; local files only) must find an
audio stream, and a duration its header claims over the limit is refused without decoding anything. Then
``ffmpeg`` decodes the first audio stream only, downmixed (or kept stereo) and resampled to MusicGen's
32 kHz, as raw PCM read in chunks: at most ``max_seconds`` (``-t``, and a byte cap on what is read), within a
time limit, killed otherwise. A file that decodes to more than the limit although its header says less (a
decompression bomb) is refused too. Only the part a job needs is kept in memory and written out: the last
10 s for a continuation, the first 30 s for a melody (a longer track loops them, as audiocraft does).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
import wave
import weakref
from dataclasses import dataclass
from enum import Enum
from pathlib import Path, PurePath

from generation.errors import InvalidJob

log = logging.getLogger(__name__)

SAMPLE_RATE = 32_000  # every MusicGen model's
CONTEXT_SECONDS = 10.0  # the end of an upload a continuation hears (as ⏩ Extend)
MELODY_SECONDS = 30.0  # MusicGen's melody models read the first 30 s; past 30 s a track loops them
MIN_SECONDS = 1.0  # less cannot prompt a continuation
SLACK = 0.25  # seconds a file may decode to beyond what its header says (codec padding) before it counts as longer
PROBE_TIMEOUT = 10.0
DECODE_TIMEOUT = 30.0
DECODERS = 2  # FFmpeg processes at once: uploads must not starve generation of the CPU
CHUNK = 1 << 16
STDERR_KEPT = 4096

SUFFIXES = (".mp3", ".ogg", ".oga", ".opus", ".wav", ".flac", ".m4a")
CONTENT_TYPES = frozenset({
    "audio/mpeg", "audio/mp3", "audio/ogg", "application/ogg", "audio/opus", "audio/wav", "audio/x-wav",
    "audio/wave", "audio/vnd.wave", "audio/flac", "audio/x-flac", "audio/mp4", "audio/x-m4a", "audio/m4a",
})
# FFmpeg's demuxers for those types (mov is the m4a one): a playlist, concat list or image is never opened
DEMUXERS = "mp3,ogg,wav,flac,mov,mp4,m4a,3gp,3g2,mj2"
KINDS = "mp3, ogg/opus, wav, flac or m4a"


class Mode(str, Enum):
    """What a job makes of an upload."""

    CONTINUE = "continue"  # its last seconds are the audio prompt; the track is that part, then the new music
    MELODY = "melody"  # its first 30 s guide a melody model (looped under a longer track)


class AudioRefused(InvalidJob):
    """An upload jamgen will not use; the message says why, for the person who sent it."""


@dataclass(frozen=True)
class Limits:
    max_bytes: int  # the upload's size
    max_seconds: float  # the upload's length (decoded)


@dataclass(frozen=True)
class Prepared:
    """An upload, decoded: the part a job uses as a WAV at :data:`SAMPLE_RATE`, and where it lies in the upload."""

    path: Path
    name: str
    mode: Mode
    start: float  # seconds into the upload
    end: float

    @property
    def seconds(self) -> float:
        return self.end - self.start

    def describe(self) -> str:
        """For the result card: ``continues the last 10 s of song.mp3 (1:20–1:30)``."""
        span = f"({clock(self.start)}–{clock(self.end)})"
        seconds = f"{round(self.seconds, 1):g}"
        if self.mode is Mode.MELODY:
            return f"follows the melody of the first {seconds} s of {self.name} {span}"
        return f"continues the last {seconds} s of {self.name} {span}"


def clock(seconds: float) -> str:
    """``83.4`` -> ``1:23``; an hour or more -> ``1:02:03``."""
    whole = int(seconds)
    hours, rest = divmod(whole, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def display_name(filename: str) -> str:
    """The file's own name (no folders), at most 80 characters."""
    name = PurePath(filename.replace("\\", "/")).name or "the file"
    return name if len(name) <= 80 else name[:77] + "…"


def is_audio_name(filename: str, content_type: str | None) -> bool:
    """Whether an attachment says it is one of the accepted types (by its name, else by its stated type)."""
    if filename.lower().endswith(SUFFIXES):
        return True
    return (content_type or "").split(";")[0].strip().lower() in CONTENT_TYPES


def check_upload(filename: str, content_type: str | None, size: int, limits: Limits) -> None:
    """Refuse an attachment before downloading it: its type, and its size as stated by the host."""
    name = display_name(filename)
    if not is_audio_name(filename, content_type):
        raise AudioRefused(f"{name} isn't an audio file jamgen reads: attach an {KINDS} file.")
    if size <= 0:
        raise AudioRefused(f"{name} is empty: attach a file with some sound in it.")
    if size > limits.max_bytes:
        raise AudioRefused(
            f"{name} is {megabytes(size)}; uploads can be at most {megabytes(limits.max_bytes)}. "
            "Cut it shorter or use a smaller format (mp3, ogg)."
        )


def megabytes(size: int) -> str:
    """``31457280`` -> ``30.0 MB``; under a megabyte, in KB."""
    return f"{size / 1_048_576:.1f} MB" if size >= 1_048_576 else f"{max(1, round(size / 1024))} KB"


# -- preparing ---------------------------------------------------------------------------------------


async def prepare(data: bytes, filename: str, mode: Mode, *, channels: int, folder: Path,
                  limits: Limits) -> Prepared:
    """Check and decode an upload's ``data``; the part a job uses is written to ``folder`` (as a WAV).

    Raises :class:`AudioRefused` with a message for the person who sent it.
    """
    name = display_name(filename)
    if len(data) > limits.max_bytes:  # the host served more than it said
        raise AudioRefused(f"{name} is larger than {megabytes(limits.max_bytes)}, the limit for uploads.")
    source = await asyncio.to_thread(_write_temporary, folder, data)
    try:
        async with _decoders():
            claimed = await probe(source, name)
            _check_claim(claimed, name, limits)
            if mode is Mode.MELODY:
                pcm, total = await decode(source, name, channels=channels, keep_first=MELODY_SECONDS,
                                          max_seconds=MELODY_SECONDS)
            else:
                pcm, total = await decode(source, name, channels=channels, keep_last=CONTEXT_SECONDS,
                                          max_seconds=limits.max_seconds)
    finally:
        with contextlib.suppress(FileNotFoundError):
            await asyncio.to_thread(os.remove, source)
    _check_decoded(total, claimed, name, len(data), limits, mode)
    kept = len(pcm) / (2 * channels * SAMPLE_RATE)
    start = 0.0 if mode is Mode.MELODY else max(0.0, total - kept)
    path = await asyncio.to_thread(write_wav, folder, pcm, channels)
    log.info("upload %s (%d bytes, %.1f s decoded) -> %s, %s %.1f-%.1f s", name, len(data), total, path.name,
             mode.value, start, start + kept)
    return Prepared(path, name, mode, start, start + kept)


_SLOTS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = weakref.WeakKeyDictionary()


def _decoders() -> asyncio.Semaphore:
    """The running loop's limit on decoders (a semaphore belongs to one loop)."""
    loop = asyncio.get_running_loop()
    if loop not in _SLOTS:
        _SLOTS[loop] = asyncio.Semaphore(DECODERS)
    return _SLOTS[loop]


def _write_temporary(folder: Path, data: bytes) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix="upload-", suffix=".in", dir=folder)
    with os.fdopen(handle, "wb") as file:
        file.write(data)
    return Path(name)


def _check_claim(claimed: float | None, name: str, limits: Limits) -> None:
    if claimed is not None and claimed > limits.max_seconds:
        raise AudioRefused(
            f"{name} is too long: its header says {clock(claimed)}, and uploads can be at most "
            f"{clock(limits.max_seconds)}. Cut out the part you want and attach that."
        )


def _check_decoded(total: float, claimed: float | None, name: str, size: int, limits: Limits, mode: Mode) -> None:
    if mode is Mode.CONTINUE and total > limits.max_seconds + SLACK:
        said = "doesn't say how long it is" if claimed is None else f"says {clock(claimed)}"
        raise AudioRefused(
            f"{name} unpacks to more than {clock(limits.max_seconds)} of audio from {megabytes(size)}, though its "
            f"header {said}: it looks like a decompression bomb, so jamgen won't use it."
        )
    if total < MIN_SECONDS:
        raise AudioRefused(f"{name} holds {total:.1f} s of audio; jamgen needs at least {MIN_SECONDS:g} s.")


# -- FFmpeg -------------------------------------------------------------------------------------------


def _tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        log.error("%s is not installed: uploads cannot be decoded", name)
        raise AudioRefused("This bot can't read audio files right now (FFmpeg is missing). Tell the admins.")
    return found


def _corrupt(name: str) -> AudioRefused:
    return AudioRefused(f"{name} couldn't be read as audio: it is damaged, or not really an {KINDS} file.")


async def probe(path: Path, name: str) -> float | None:
    """The duration the file's header claims (``None``: it says none); refuses a file with no audio stream."""
    args = [
        _tool("ffprobe"), "-v", "error", "-protocol_whitelist", "file", "-format_whitelist", DEMUXERS,
        "-select_streams", "a:0", "-show_entries", "format=duration:stream=codec_type", "-of", "json", str(path),
    ]
    process = await asyncio.create_subprocess_exec(
        *args, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(PROBE_TIMEOUT):
            out, err = await process.communicate()
    except TimeoutError:
        log.warning("ffprobe took over %.0f s on %s", PROBE_TIMEOUT, name)
        raise AudioRefused(f"{name} took too long to read: it is damaged or built to stall readers.") from None
    finally:
        await _reap(process)
    if process.returncode != 0:
        log.info("ffprobe refused %s: %s", name, err[:STDERR_KEPT].decode(errors="replace").strip())
        raise _corrupt(name)
    return _claimed_duration(out, name)


def _claimed_duration(out: bytes, name: str) -> float | None:
    try:
        found = json.loads(out)
    except ValueError:
        raise _corrupt(name) from None
    if not any(stream.get("codec_type") == "audio" for stream in found.get("streams") or []):
        raise AudioRefused(f"{name} has no audio in it: attach an {KINDS} file with sound.")
    try:
        duration = float(found.get("format", {}).get("duration"))
    except (TypeError, ValueError):
        return None
    return duration if duration >= 0 else None


async def decode(path: Path, name: str, *, channels: int, max_seconds: float, keep_first: float | None = None,
                 keep_last: float | None = None) -> tuple[bytes, float]:
    """Decode the first audio stream to 16-bit PCM at :data:`SAMPLE_RATE` with ``channels``.

    Decodes at most just over ``max_seconds`` (so that more shows); keeps the first ``keep_first`` or the last
    ``keep_last`` seconds. Returns (the kept PCM, the seconds decoded).
    """
    frame = 2 * channels
    cap = int((max_seconds + 0.5) * SAMPLE_RATE) * frame  # bytes that may be read; reaching it means "longer"
    keep = int((keep_first or keep_last or max_seconds) * SAMPLE_RATE) * frame
    args = [
        _tool("ffmpeg"), "-nostdin", "-hide_banner", "-loglevel", "error", "-protocol_whitelist", "file",
        "-format_whitelist", DEMUXERS, "-threads", "1", "-i", str(path), "-map", "0:a:0", "-vn", "-sn", "-dn",
        "-ac", str(channels), "-ar", str(SAMPLE_RATE), "-t", f"{max_seconds + 0.5:.3f}",
        "-f", "s16le", "-acodec", "pcm_s16le", "pipe:1",
    ]
    process = await asyncio.create_subprocess_exec(
        *args, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None and process.stderr is not None
    errors = asyncio.create_task(_drain(process.stderr))
    try:
        async with asyncio.timeout(DECODE_TIMEOUT):
            pcm, total = await _read_pcm(process.stdout, frame, cap, keep, last=keep_last is not None)
            if total < cap:
                await process.wait()
    except TimeoutError:
        log.warning("ffmpeg took over %.0f s on %s", DECODE_TIMEOUT, name)
        raise AudioRefused(f"{name} took too long to decode: it is damaged or built to stall readers.") from None
    finally:
        await _reap(process)
        stderr = await errors
    if total < cap and process.returncode != 0 and total == 0:
        log.info("ffmpeg could not decode %s: %s", name, stderr.decode(errors="replace").strip())
        raise _corrupt(name)
    return pcm, total / (frame * SAMPLE_RATE)


async def _read_pcm(stream: asyncio.StreamReader, frame: int, cap: int, keep: int, *, last: bool
                    ) -> tuple[bytes, int]:
    """Read until the end or ``cap`` bytes; keep the first (or, with ``last``, the latest) ``keep`` bytes."""
    kept, total = bytearray(), 0
    while total < cap:
        chunk = await stream.read(min(CHUNK, cap - total))
        if not chunk:
            break
        total += len(chunk)
        if last:
            kept += chunk
            surplus = len(kept) - keep
            if surplus > keep:  # trim now and then, by whole frames, so the kept part stays aligned
                del kept[: surplus - surplus % frame]
        elif len(kept) < keep:
            kept += chunk[: keep - len(kept)]
    total -= total % frame
    whole = kept[: len(kept) - len(kept) % frame]  # a part of a frame can only be at the end
    return bytes(whole[-keep:] if last else whole[:keep]), total


async def _drain(stream: asyncio.StreamReader) -> bytes:
    """Read a pipe to its end (so the process never blocks on it), keeping its first bytes."""
    kept = bytearray()
    while chunk := await stream.read(CHUNK):
        if len(kept) < STDERR_KEPT:
            kept += chunk[: STDERR_KEPT - len(kept)]
    return bytes(kept)


async def _reap(process: asyncio.subprocess.Process) -> None:
    """Kill the process unless it has ended, and wait for it (no zombie, whatever happened)."""
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
    await process.wait()


# -- the WAV ------------------------------------------------------------------------------------------------


def write_wav(folder: Path, pcm: bytes, channels: int) -> Path:
    """``pcm`` as a WAV in ``folder``, named after its content (the same audio twice is one file)."""
    digest = hashlib.sha256(pcm + bytes([channels])).hexdigest()[:32]
    path = folder / f"{digest}.wav"
    if path.exists():
        os.utime(path)  # kept for as long as it is used (see prune_files)
        return path
    handle, temporary = tempfile.mkstemp(prefix="wav-", suffix=".tmp", dir=folder)
    os.close(handle)
    try:
        with wave.open(temporary, "wb") as file:
            file.setnchannels(channels)
            file.setsampwidth(2)
            file.setframerate(SAMPLE_RATE)
            file.writeframes(pcm)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(temporary)
        raise
    return path


def prune_files(folder: Path, before: float) -> int:
    """Delete the prepared uploads in ``folder`` last used before ``before`` (epoch s). Returns how many."""
    removed = 0
    for path in folder.glob("*.wav") if folder.is_dir() else ():
        with contextlib.suppress(FileNotFoundError):
            if path.stat().st_mtime < before:
                path.unlink()
                removed += 1
    return removed


def channels_for(model: str) -> int:
    """What a model reads: stereo for the stereo models, else mono (the job converts anyway; this saves bytes)."""
    return 2 if "stereo" in model.lower() else 1


def is_melody_model(model: str) -> bool:
    """Whether a model follows melodies, by its name (``facebook/musicgen-melody``, ``…-stereo-melody…``)."""
    return "melody" in model.lower()


def extension_seconds(asked: float) -> float:
    """Seconds a continuation adds: what was asked (already within the server's limit). Past the model's window
    the continuation slides (generation/windows.py), so the part it hears takes nothing from it."""
    return max(MIN_SECONDS, asked)
