"""The embedding cache of a folder, and the lock that keeps two indexing processes from colliding.

``<audio_dir>/.salsa_index/<model_id>.npz`` (hidden, so never scanned), a numpy archive read without
pickle: ``meta`` (JSON: format, model id, window policy), per file ``paths`` (relative, POSIX),
``sizes``, ``mtimes`` (ns), ``durations`` (s), ``counts`` (windows); per window ``embeddings`` (W, D)
float32, ``starts`` and ``ends`` (s); the undecodable files (``bad_*``) with their reasons. A file's
windows are reused when its path, size and mtime_ns match. Written to a temporary file and moved
into place, so a reader sees the old or the new cache, never half of one; an unreadable cache is
rebuilt, never fatal. ``<model_id>.lock`` (a ``filelock`` lock) is held while a process reads,
embeds and writes, so a second process waits and then reuses the first one's work.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path

import filelock
import numpy as np

from salsa_lib.errors import DataError
from salsa_lib.files import atomic_path

CACHE_FORMAT = 2


@dataclass
class FileEntry:
    """One file's windows: what the cache stores and what the index is assembled from."""

    size: int
    mtime: int
    duration: float
    embeddings: np.ndarray  # (windows, D)
    starts: np.ndarray
    ends: np.ndarray


def read_cache(path: Path, meta: dict):
    """({rel: FileEntry}, {rel: (size, mtime, reason)}, note or None)."""
    if not path.exists():
        return {}, {}, None
    try:
        with np.load(path, allow_pickle=False) as archive:
            if json.loads(str(archive["meta"])) != meta:
                return {}, {}, f"embedding cache {path} belongs to another model or window policy; rebuilt"
            a = {k: archive[k] for k in archive.files}
        counts = a["counts"].astype(np.int64)
        bounds = np.r_[0, np.cumsum(counts)]
        n, w = len(a["paths"]), int(bounds[-1])
        if not (a["embeddings"].shape == (w, meta["dim"]) and len(a["starts"]) == len(a["ends"]) == w
                and len(a["sizes"]) == len(a["mtimes"]) == len(a["durations"]) == len(counts) == n
                and len(a["bad_sizes"]) == len(a["bad_mtimes"]) == len(a["bad_reasons"]) == len(a["bad_paths"])):
            raise ValueError("inconsistent array shapes")
        good = {str(p): FileEntry(int(a["sizes"][i]), int(a["mtimes"][i]), float(a["durations"][i]),
                                  *(a[k][bounds[i]:bounds[i + 1]] for k in ("embeddings", "starts", "ends")))
                for i, p in enumerate(a["paths"])}
        failed = {str(p): (int(s), int(m), str(r))
                  for p, s, m, r in zip(a["bad_paths"], a["bad_sizes"], a["bad_mtimes"], a["bad_reasons"])}
        return good, failed, None
    except Exception as err:  # zip, JSON, key, shape errors alike: the cache is just rebuilt
        return {}, {}, f"embedding cache {path} was unreadable ({type(err).__name__}: {err}); rebuilt"


def write_cache(path: Path, meta: dict, entries: dict[str, FileEntry], bad: list[tuple[str, int, int, str]]) -> None:
    """Atomically replace the cache with ``entries`` (in their order) and the undecodable files ``bad``."""
    rels = list(entries)
    values = [entries[r] for r in rels]

    def stack(key, empty_shape):
        parts = [getattr(e, key) for e in values]
        return np.concatenate(parts) if parts else np.zeros(empty_shape, np.float32)

    arrays = dict(meta=np.array(json.dumps(meta, sort_keys=True)), paths=np.array(rels, dtype=str),
                  sizes=np.array([e.size for e in values], np.int64), mtimes=np.array([e.mtime for e in values], np.int64),
                  durations=np.array([e.duration for e in values], np.float64),
                  counts=np.array([len(e.starts) for e in values], np.int64),
                  embeddings=stack("embeddings", (0, meta["dim"])).astype(np.float32, copy=False),
                  starts=stack("starts", 0), ends=stack("ends", 0),
                  bad_paths=np.array([b[0] for b in bad], dtype=str), bad_sizes=np.array([b[1] for b in bad], np.int64),
                  bad_mtimes=np.array([b[2] for b in bad], np.int64), bad_reasons=np.array([b[3] for b in bad], dtype=str))
    with atomic_path(path, suffix=".npz") as tmp, open(tmp, "wb") as handle:
        np.savez(handle, **arrays)


@contextlib.contextmanager
def folder_lock(cache_path: Path, timeout: float, notes: list[str]):
    """Hold ``<cache>.lock`` for the block; wait up to ``timeout`` s for another process (noted)."""
    lock_path = cache_path.with_suffix(".lock")
    try:
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        lock = filelock.FileLock(str(lock_path))
        lock.acquire(timeout=0)
    except filelock.Timeout:
        notes.append(f"another process was indexing this folder with this model; waited for it ({lock_path})")
        try:
            lock.acquire(timeout=timeout)
        except filelock.Timeout as err:
            raise DataError(f"another process has been indexing {cache_path.parent.parent} with this model for "
                            f"over {timeout:g} s (lock {lock_path}); wait for it, or remove the lock file if "
                            "no such process runs") from err
    except OSError as err:  # a read-only folder: index without lock and (later) without cache
        notes.append(f"could not create the lock {lock_path} ({err.strerror or err}); indexing without it")
        yield
        return
    try:
        yield
    finally:
        lock.release()
