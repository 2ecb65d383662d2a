"""Find the sound files of a folder by their content and stream them as model windows.

A real sound library is not four tidy extensions: Ogg files are named ``.oga`` or ``.opus``, AIFF
and upper-case names abound, and a folder also holds cover art and notes. So every file is probed
with libsndfile (which reads WAV, FLAC, Ogg Vorbis/Opus, AIFF, MP3, CAF, W64, ... here) and the
extension only decides how a failure is reported: a ``.txt`` that is not audio is merely counted,
a ``.wav`` that is not audio is listed with its reason.

Decoding is streamed: blocks of the source are mixed to mono and resampled with
``soxr.ResampleStream`` at quality HQ, the resampler ``librosa.load`` uses for the training audio
(``soxr_hq``), so a window embedded here sees the same signal as a training clip, and memory stays
a few windows whatever the file's length. libsndfile's decoders (mpg123 for MP3) print warnings
straight to file descriptor 2; ``quiet_stderr`` keeps them off the user's terminal.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from salsa_lib.data.audio import SAMPLE_RATE, truncation_reason
from salsa_lib.errors import DataError

# names that promise audio: when such a file cannot be read, the user hears why
AUDIO_SUFFIXES = frozenset(".wav .wave .flac .ogg .oga .opus .mp3 .aif .aiff .aifc .au .snd .caf .w64 .rf64 "
                           ".m4a .mp4 .aac .wma .ape .wv .mka .webm .amr .mp2 .mpga .spx".split())
# leading bytes of containers libsndfile does not read here: "unsupported codec", not "not audio"
_FOREIGN_MAGIC = {b"ftyp": "MPEG-4/AAC (m4a)", b"\x30\x26\xb2\x75": "Windows Media (wma)",
                  b"MAC ": "Monkey's Audio (ape)", b"wvpk": "WavPack", b"\x1a\x45\xdf\xa3": "Matroska/WebM",
                  b"#!AMR": "AMR"}
_AUDIO_MAGIC = (b"RIFF", b"RF64", b"fLaC", b"OggS", b"ID3", b"FORM", b".snd", b"caff", b"riff")
DISAPPEARED = "disappeared after it was listed (deleted or moved while indexing)"
BLOCK_SECONDS = 30.0  # decoded per read: large enough for fast I/O, small enough to keep memory flat


@dataclass(frozen=True)
class Listing:
    """A folder walk: candidate files (rel, path, size, mtime_ns), problems (rel, reason), other files."""

    files: list
    problems: list
    non_audio: list


def list_files(root: Path) -> Listing:
    """Every non-hidden regular file below ``root``, following folder links once (loops are noted)."""
    files, problems, non_audio, seen = [], [], [], set()
    for folder, subfolders, names in os.walk(root, followlinks=True, onerror=lambda err: problems.append(
            (_rel(Path(err.filename), root), f"cannot list folder ({err.strerror})"))):
        here = os.stat(folder)
        if (here.st_dev, here.st_ino) in seen:  # reached again through a link: a loop or a duplicate
            problems.append((_rel(Path(folder), root), "symbolic link loop or repeated folder; not followed"))
            subfolders[:] = []
            continue
        seen.add((here.st_dev, here.st_ino))
        subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))
        for name in sorted(n for n in names if not n.startswith(".")):
            path = Path(folder) / name
            try:
                stat = path.stat()
            except OSError as err:
                why = "symbolic link loop" if err.errno == errno.ELOOP else f"cannot read ({err.strerror})"
                problems.append((_rel(path, root), why))
                continue
            audio_name = path.suffix.lower() in AUDIO_SUFFIXES
            if not path.is_file():
                (problems.append((_rel(path, root), "not a regular file")) if audio_name
                 else non_audio.append(_rel(path, root)))
            elif stat.st_size == 0:
                (problems.append((_rel(path, root), "empty file (0 bytes)")) if audio_name
                 else non_audio.append(_rel(path, root)))
            else:
                files.append((_rel(path, root), path, stat.st_size, stat.st_mtime_ns))
    return Listing(files, problems, non_audio)


def _rel(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


@contextlib.contextmanager
def quiet_stderr():
    """Send file descriptor 2 to a scratch file for the block: C decoders write there directly."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def probe(path: Path) -> tuple[sf._SoundFileInfo | None, str | None, bool]:
    """(info, None, True) for a readable sound; else (None, reason, looks_like_audio)."""
    try:
        with quiet_stderr():
            info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError, OSError) as err:
        return None, *_failure(path, err)
    if info.frames <= 0 or info.samplerate <= 0:
        return None, "zero-length audio (no samples)", True
    truncated = truncation_reason(path)
    return (None, truncated, True) if truncated else (info, None, True)


def _failure(path: Path, err: Exception) -> tuple[str, bool]:
    try:
        with open(path, "rb") as handle:
            head = handle.read(12)
    except FileNotFoundError:
        return DISAPPEARED, True
    except OSError as exc:
        return f"cannot read ({exc.strerror})", True
    for magic, name in _FOREIGN_MAGIC.items():
        if magic in head[:12]:
            return f"unsupported codec: {name} (no installed decoder reads it)", True
    detail = _detail(err)
    if head.startswith(_AUDIO_MAGIC) or _mpeg_frame(head):
        return f"truncated or corrupt audio file (decoder: {detail})", True
    return "not audio (no installed decoder recognises its content)", path.suffix.lower() in AUDIO_SUFFIXES


def _detail(err: Exception) -> str:
    """libsndfile's message, minus its misleading "does not exist" for files its MP3 decoder rejects."""
    detail = str(err).split(": ", 1)[-1].strip() or type(err).__name__
    return "no readable audio frames" if "does not exist or is not a regular file" in detail else detail


def _mpeg_frame(head: bytes) -> bool:
    return len(head) > 1 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0


def decode_error(path: Path, err: Exception) -> DataError:
    """A DataError with a bare ``reason`` for a failure part-way through a file."""
    if isinstance(err, FileNotFoundError) or not path.exists():
        reason = DISAPPEARED
    elif isinstance(err, OSError) and not isinstance(err, sf.LibsndfileError):
        reason = f"cannot read ({err.strerror or err})"
    else:
        reason = f"truncated or corrupt audio file (decoder: {_detail(err)})"
    error = DataError(f"{path}: {reason}")
    error.reason = reason
    return error


def stream_windows(path: Path, window: int, hop: int, sample_rate: int = SAMPLE_RATE):
    """Yield (start sample, window of ``window`` samples, fraction that is audio) at ``sample_rate``.

    Windows start every ``hop`` samples; the last one is zero-padded and covers the file's end, so
    every sample lies in some window. Memory: one decoded block plus one window, whatever the length.
    Raises DataError (with ``.reason``) for decoding failures, non-finite or zero-length audio.
    """
    buffer, offset, emitted_end, total = np.zeros(0, np.float32), 0, 0, 0
    try:  # stderr is quiet only inside decoder calls: between yields the caller's progress bar may write
        with quiet_stderr():
            handle = sf.SoundFile(str(path))
    except (sf.LibsndfileError, RuntimeError, OSError) as err:
        raise decode_error(path, err) from err
    try:
        with handle:
            rate = handle.samplerate
            resampler = None if rate == sample_rate else soxr.ResampleStream(rate, sample_rate, 1, dtype="float32",
                                                                             quality="HQ")
            block = max(1, int(BLOCK_SECONDS * rate))
            while True:
                with quiet_stderr():
                    data = handle.read(block, dtype="float32", always_2d=True)
                last = len(data) < block
                mono = data.mean(axis=1, dtype=np.float32) if data.shape[1] > 1 else data[:, 0]
                if not np.isfinite(mono).all():
                    raise _reason(path, "non-finite samples (NaN or Inf)")
                if resampler is not None:
                    mono = resampler.resample_chunk(mono, last=last)
                total += len(mono)
                buffer = np.concatenate([buffer, mono])
                while len(buffer) >= window:  # full windows
                    yield offset, buffer[:window].copy(), 1.0
                    emitted_end = offset + window
                    buffer, offset = buffer[hop:], offset + hop
                if last:
                    break
    except DataError:
        raise
    except (sf.LibsndfileError, RuntimeError, OSError) as err:
        raise decode_error(path, err) from err
    if total == 0:
        raise _reason(path, "zero-length audio (decodes to 0 samples)")
    if emitted_end < total:  # the tail (or a file shorter than one window)
        padded = np.zeros(window, np.float32)
        padded[:len(buffer)] = buffer
        yield offset, padded, len(buffer) / window


def _reason(path: Path, reason: str) -> DataError:
    error = DataError(f"{path}: {reason}")
    error.reason = reason
    return error


def readable_formats() -> dict[str, str]:
    """libsndfile's container formats on this install (e.g. WAV, FLAC, OGG, MP3, AIFF)."""
    return dict(sf.available_formats())


def read_span(path: Path, start: float, end: float, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Mono float32 samples of seconds [start, end) at ``sample_rate``, read by seeking (not the whole file)."""
    with quiet_stderr(), sf.SoundFile(str(path)) as handle:
        rate = handle.samplerate
        handle.seek(min(int(start * rate), handle.frames))
        data = handle.read(max(0, int((end - start) * rate)), dtype="float32", always_2d=True)
    mono = data.mean(axis=1, dtype=np.float32)
    return mono if rate == sample_rate else soxr.resample(mono, rate, sample_rate, quality="HQ").astype(np.float32)
