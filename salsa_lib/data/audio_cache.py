"""The per-split decoded-audio cache.

SALSA decodes every clip to mono at 32 kHz. Decoding and resampling a ClothoV2 clip costs far more
than a training step needs, so each split is decoded once into a flat int16 file that is memory
mapped: opening is instant, memory stays low and DataLoader workers share the page cache.

Cache layout (a folder, e.g. ``<cache_dir>/development_32000/``):

``index.json``
    names, offsets, lengths (samples), sample rate, format version, the stamp of the sources
    (size and mtime_ns of each), the skipped clips, the array file's name, size and blake2b digest.
``audio-<token>.int16``
    all kept clips concatenated, little-endian int16 (float × 32767, clipped to [-1, 1]).

A build writes a new array file under a fresh name, then replaces ``index.json`` last, so the
previous index keeps pointing at the previous (untouched) array until the very end: a crash or a bad
clip mid-build leaves the previous cache usable. Concurrent builds of one cache are not supported.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import uuid
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from tqdm.auto import tqdm

from salsa_lib.data import audio  # audio.load_audio looked up per call: the kill drill replaces it
from salsa_lib.errors import DataError
from salsa_lib.files import atomic_path, atomic_write_json, file_digest
from salsa_lib.quiet import progress_visible

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
INDEX_NAME = "index.json"
SCALE = 32767
DTYPE = "<i2"


class AudioCache:
    """Read-only view of a built cache: ``cache[i]`` / ``cache.get(name)`` give float32 waves.

    The memory map is opened lazily and dropped when pickled, so DataLoader workers each map the
    file themselves instead of receiving a copy of the whole split.
    """

    def __init__(self, path: Path, index: dict):
        self.path = Path(path)
        self.index = index
        self.names: list[str] = list(index["names"])
        self.offsets = np.asarray(index["offsets"], dtype=np.int64)
        self.lengths = np.asarray(index["lengths"], dtype=np.int64)
        self.sample_rate: int = int(index["sample_rate"])
        self.skipped: list[tuple[str, str]] = [tuple(item) for item in index["skipped"]]
        self._array: np.ndarray | None = None
        self._positions: dict[str, int] | None = None

    @classmethod
    def open(cls, cache_path: str | os.PathLike, verify: bool = True) -> "AudioCache":
        """Open a cache, checking its array file against the index (size always, checksum if ``verify``).

        Any inconsistency is a DataError, which ``build_audio_cache`` takes as "rebuild".
        """
        cache_path = Path(cache_path)
        index = _read_index(cache_path)
        try:
            cache = cls(cache_path, index)
            _check_array(cache_path, index, verify)
        except DataError:
            raise
        except (TypeError, ValueError, KeyError, OverflowError) as exc:  # a hand-edited or foreign index
            raise DataError(f"{cache_path / INDEX_NAME}: malformed cache index ({exc!r})") from exc
        return cache

    @property
    def array_path(self) -> Path:
        return self.path / self.index["array_file"]

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, i: int) -> np.ndarray:
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"clip index {i} out of range for {n} clips in {self.path}")
        i = int(i) % n
        start = int(self.offsets[i])
        clip = self._samples()[start : start + int(self.lengths[i])]
        return clip.astype(np.float32) * np.float32(1.0 / SCALE)

    def get(self, name: str) -> np.ndarray:
        if self._positions is None:
            self._positions = {clip: k for k, clip in enumerate(self.names)}
        if name not in self._positions:
            raise KeyError(f"{name!r} is not in the audio cache {self.path}")
        return self[self._positions[name]]

    def _samples(self) -> np.ndarray:
        if self._array is None:
            if self.index["array_bytes"] == 0:  # every clip skipped: nothing to map
                self._array = np.zeros(0, dtype=DTYPE)
            else:
                self._array = np.memmap(self.array_path, dtype=DTYPE, mode="r")
        return self._array

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_array"] = None  # a pickled memmap would copy the whole split
        return state

    def __repr__(self) -> str:
        return f"AudioCache({str(self.path)!r}, clips={len(self)}, sample_rate={self.sample_rate})"


def _read_index(cache_path: Path) -> dict:
    index_path = cache_path / INDEX_NAME
    try:
        index = json.loads(index_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{index_path}: unreadable cache index ({exc})") from exc
    required = {"format_version", "sample_rate", "names", "offsets", "lengths", "sources", "skipped",
                "array_file", "array_bytes", "checksum"}
    missing = sorted(required - index.keys()) if isinstance(index, dict) else "everything (not an object)"
    if missing:
        raise DataError(f"{index_path}: cache index lacks {missing}")
    return index


def _check_array(cache_path: Path, index: dict, verify: bool) -> None:
    array_path = cache_path / index["array_file"]
    expected = int(index["array_bytes"])
    if expected != 2 * int(sum(index["lengths"])):
        raise DataError(f"{cache_path / INDEX_NAME}: cache index is inconsistent (lengths vs array size)")
    actual = array_path.stat().st_size if array_path.is_file() else None
    if actual != expected:
        raise DataError(f"{array_path}: cache array has {actual} bytes, index expects {expected}")
    if verify and file_digest(array_path, _checksum) != index["checksum"]:
        raise DataError(f"{array_path}: cache array checksum mismatch (file corrupted)")


def _checksum():
    """The cache array's checksum: written while the array is, checked when it is opened."""
    return hashlib.blake2b(digest_size=32)


def _source_stamp(name: str, path: Path) -> dict:
    """Size and mtime_ns: cheap to read, and they change whenever a file is replaced or rewritten."""
    try:
        stat = path.stat()
    except OSError:
        return {"name": name, "size": None, "mtime_ns": None}
    return {"name": name, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def build_audio_cache(
    files: Iterable[str | os.PathLike],
    cache_path: str | os.PathLike,
    *,
    sample_rate: int = audio.SAMPLE_RATE,
    names: Sequence[str] | None = None,
    skip_bad: bool = False,
    progress: bool = True,
    verify: bool = True,
) -> AudioCache:
    """Return the cache of ``files`` at ``cache_path``, decoding only when it is missing, stale or corrupt.

    ``names`` (default: the files' base names) identify the clips in the cache. With ``skip_bad``
    unusable clips are recorded in ``cache.skipped`` and left out; otherwise the first one raises a
    DataError (with ``.path``/``.reason``) and the previous cache stays as it was.
    """
    files = [Path(f) for f in files]
    names = [f.name for f in files] if names is None else [str(n) for n in names]
    if len(names) != len(files):
        raise ValueError(f"{len(names)} names for {len(files)} files")
    if len(set(names)) != len(names):
        duplicate = next(n for n in names if names.count(n) > 1)
        raise DataError(f"clip name {duplicate!r} appears twice in the files for {cache_path}")
    cache_path = Path(cache_path)
    sources = [_source_stamp(n, f) for n, f in zip(names, files)]
    cache = _current_cache(cache_path, sample_rate, sources, verify)
    if cache is None:
        cache = _build(files, names, sources, cache_path, sample_rate, skip_bad, progress)
    if cache.skipped and not skip_bad:
        name, reason = cache.skipped[0]
        raise audio.bad_audio(files[names.index(name)], reason)
    return cache


def _current_cache(cache_path: Path, sample_rate: int, sources: list[dict],
                   verify: bool) -> AudioCache | None:
    """The existing cache if it was built from exactly these sources at this rate and is intact."""
    if not (cache_path / INDEX_NAME).exists():
        return None
    try:
        index = _read_index(cache_path)
        wanted = (FORMAT_VERSION, sample_rate, sources)
        if (index["format_version"], index["sample_rate"], index["sources"]) != wanted:
            log.info("audio cache %s is stale; rebuilding", cache_path)
            return None
        return AudioCache.open(cache_path, verify=verify)
    except DataError as exc:
        log.warning("audio cache %s is unusable (%s); rebuilding", cache_path, exc)
        return None


def _build(files, names, sources, cache_path: Path, sample_rate: int, skip_bad: bool,
           progress: bool) -> AudioCache:
    """Write a fresh array under a new name, then commit it by replacing the index (last)."""
    array_file = f"audio-{uuid.uuid4().hex[:16]}.int16"
    with atomic_path(cache_path / array_file) as tmp, open(tmp, "wb") as handle:
        clips = tqdm(list(zip(names, files)), desc=f"decoding {cache_path.name}",
                     disable=not (progress and progress_visible()))
        index = _write_clips(handle, clips, sample_rate, skip_bad)
        handle.flush()
        os.fsync(handle.fileno())
    index.update(format_version=FORMAT_VERSION, sample_rate=sample_rate, dtype=DTYPE, scale=SCALE,
                 sources=sources, array_file=array_file)
    atomic_write_json(cache_path / INDEX_NAME, index)  # the commit point
    _remove_old_arrays(cache_path, keep=array_file)
    return AudioCache.open(cache_path, verify=False)


def _write_clips(handle, clips, sample_rate: int, skip_bad: bool) -> dict:
    """Decode, quantise and append each clip; return the index entries that describe the array."""
    digest = _checksum()
    index = {"names": [], "offsets": [], "lengths": [], "skipped": []}
    total = 0
    for name, path in clips:
        try:
            wave = audio.load_audio(path, sample_rate)
        except DataError as exc:
            if not skip_bad:
                raise
            index["skipped"].append([name, getattr(exc, "reason", str(exc))])
            continue
        data = (np.clip(wave, -1.0, 1.0) * SCALE).round().astype(DTYPE).tobytes()
        handle.write(data)
        digest.update(data)
        index["names"].append(name)
        index["offsets"].append(total)
        index["lengths"].append(len(wave))
        total += len(wave)
    index.update(array_bytes=2 * total, checksum=digest.hexdigest())
    return index


def _remove_old_arrays(cache_path: Path, keep: str) -> None:
    """Arrays of earlier builds (and temporaries of crashed ones) are dead weight once the index moved on."""
    for old in list(cache_path.glob("audio-*.int16")) + list(cache_path.glob(".audio-*.tmp*")):
        if old.name != keep:
            old.unlink(missing_ok=True)
