"""Audio decoding: any file libsndfile or audioread can read, to mono float32 at the models' rate.

Bad files raise a DataError that names the file and says why (not audio, truncated, empty, ...);
``crop_or_pad`` fixes a clip's length for batching. The per-split decoded cache is ``audio_cache``.
"""

from __future__ import annotations

import logging
import os
import re
import warnings
from pathlib import Path

import audioread.exceptions
import librosa
import numpy as np
import soundfile as sf
from librosa.util.exceptions import ParameterError

from salsa_lib.config import MODEL_SAMPLE_RATE as SAMPLE_RATE  # clips are decoded at the models' rate
from salsa_lib.errors import DataError

log = logging.getLogger(__name__)

# libsndfile's log: "data : 176400 (should be 88178)" means the header promises more than the file
# holds (a cut-off download). Streaming writers leave 0 or 0xFFFFFFFF as placeholders; those are fine.
_DECLARED_SIZE = re.compile(r"^data\s*:\s*(\d+)\s*\(should be (\d+)\)", re.MULTILINE)
_PLACEHOLDER_SIZE = 0x7FFFFFFF


def bad_audio(path: Path, reason: str) -> DataError:
    """A DataError that also carries the bare reason, so a cache can record skipped clips tidily."""
    err = DataError(f"{path}: {reason}")
    err.path, err.reason = path, reason
    return err


def load_audio(path: str | os.PathLike, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Decode ``path`` to a mono float32 wave at ``sample_rate`` (librosa's default resampler).

    Every way a clip can be unusable becomes a DataError naming the file, so a bad download is
    reported as such instead of surfacing later as NaN losses or a cryptic decoder traceback.
    """
    path = Path(path)
    _check_file(path)
    truncated = truncation_reason(path)
    if truncated:
        raise bad_audio(path, truncated)
    wave = _decode(path, sample_rate)
    if wave.size == 0:
        raise bad_audio(path, "zero-length audio (decodes to 0 samples)")
    if not np.isfinite(wave).all():
        raise bad_audio(path, "non-finite samples (NaN or Inf)")
    return np.ascontiguousarray(wave, dtype=np.float32)


def _check_file(path: Path) -> None:
    if not path.exists():
        raise bad_audio(path, "missing file")
    if not path.is_file():
        raise bad_audio(path, "not a regular file")
    if path.stat().st_size == 0:
        raise bad_audio(path, "empty file (0 bytes)")


def truncation_reason(path: Path) -> str | None:
    """libsndfile silently decodes the surviving part of a cut-off WAV/Ogg; its header log tells."""
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError):
        return None  # not readable by libsndfile at all: the decoder reports it
    match = _DECLARED_SIZE.search(info.extra_info)
    if match and _PLACEHOLDER_SIZE > int(match[1]) > int(match[2]):
        return f"truncated or corrupt file (header declares {match[1]} data bytes, file holds {match[2]})"
    if "lacks an end-of-stream bit" in info.extra_info:
        return "truncated or corrupt file (the last Ogg page lacks the end-of-stream bit)"
    return None


def _decode(path: Path, sample_rate: int) -> np.ndarray:
    try:
        with warnings.catch_warnings():
            # librosa falls back to (deprecated) audioread when libsndfile fails; we report the failure.
            warnings.filterwarnings("ignore", message="PySoundFile failed")
            warnings.filterwarnings("ignore", category=FutureWarning)
            wave, _ = librosa.load(path, sr=sample_rate, mono=True)
    except ParameterError as exc:
        finite = "finite" in str(exc)
        raise bad_audio(path, "non-finite samples (NaN or Inf)" if finite else f"invalid audio ({exc})") from exc
    except (sf.SoundFileError, audioread.exceptions.DecodeError, EOFError) as exc:
        reason = f"truncated, corrupt or not an audio file ({_libsndfile_error(path)})"
        raise bad_audio(path, reason) from exc
    except OSError as exc:
        raise bad_audio(path, f"cannot read ({exc.strerror or exc})") from exc
    return wave


def _libsndfile_error(path: Path) -> str:
    """librosa's fallback hides libsndfile's own diagnosis ("Format not recognised", "lost sync")."""
    try:
        with sf.SoundFile(str(path)) as handle:
            handle.read(dtype="int16")
    except (sf.SoundFileError, RuntimeError) as exc:
        return str(exc)
    return "no decoder could read it"


def crop_or_pad(wave: np.ndarray, n_samples: int,
                rng: np.random.Generator | None = None) -> tuple[np.ndarray, float]:
    """Fix a wave's length so clips batch together; report how much of the result is real audio.

    Training (``rng`` given) takes a uniformly random crop so every epoch sees different excerpts;
    evaluation (no ``rng``) takes the start so results are deterministic. Short clips are zero-padded
    at the end, and the returned fraction lets the model mask the padded windows.
    """
    if n_samples <= 0:
        raise ValueError(f"n_samples must be positive, got {n_samples}")
    wave = np.asarray(wave, dtype=np.float32)
    if len(wave) > n_samples:
        start = int(rng.integers(0, len(wave) - n_samples + 1)) if rng is not None else 0
        return wave[start : start + n_samples].copy(), 1.0
    out = np.zeros(n_samples, dtype=np.float32)
    out[: len(wave)] = wave
    return out, len(wave) / n_samples
