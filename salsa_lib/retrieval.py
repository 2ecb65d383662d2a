"""Text-to-audio search over a folder of sound files: embedding cache, exact and FAISS backends.

    model, config, model_id = load_search_model("results/tiny/stage1/member0/checkpoints/best.ckpt")
    index = build_index("my_sounds/", model, model_id)        # embeds new/changed files only
    response = search(index, model, model_id, "a dog barks")  # a list of SearchResult, plus .notes
    for r in response: print(r.rank, round(r.score, 3), index.root / r.path)

**Length policy.** Each file is decoded to 32 kHz mono. Files up to ``max_seconds`` (600 s) are
embedded whole, like the model embeds its own clips: zero-padded to a whole number of model windows,
``audio_length`` marking the real part, PaSST on every window, mean over the windows that hold audio.
Longer files are cut to their first ``max_seconds`` (listed in ``index.truncated`` and ``index.notes``).
``seconds=config.eval_seconds`` instead embeds only each file's first ``seconds`` (the evaluation crop).
Files are batched with others of the same window count, so batches hold no padding windows.

**Cache.** ``<audio_dir>/.salsa_index/<model_id>.npz`` (hidden folders and files are not scanned), a
numpy archive read without pickle: ``meta`` (JSON: format, model id, policy), per file ``paths``
(relative, POSIX), ``sizes``, ``mtimes`` (ns), ``embeddings`` (N, D) float32, ``durations`` (s), and the
unreadable files (``bad_*``) with their reasons. An entry is reused when path, size and mtime_ns match
and the model id and policy are the cache's; everything else is decoded again. The cache is written to a
temporary file and moved into place; an unreadable cache is ignored (rebuilt), never fatal.

**Backends.** ``exact``: one matrix-vector product and ``argpartition``. ``faiss``: a 1-bit RaBitQ
fast-scan index (``faiss.IndexRaBitQFastScan``, inner product, 8-bit query quantisation) proposes
``max(2000, N/100, 50 top_k)`` candidates that are re-ranked with the exact float32 embeddings; so
scores are always exact cosines. ``auto`` (default) uses FAISS from ``FAISS_THRESHOLD`` = 100,000 files.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from salsa_lib.audio import SAMPLE_RATE, load_audio
from salsa_lib.data import preprocess_caption
from salsa_lib.errors import ConfigError, DataError
from salsa_lib.files import atomic_path, file_digest

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3")
CACHE_FORMAT = 1
FAISS_THRESHOLD = 100_000  # below: exact search takes <= ~20 ms on 2 cores (benchmarks/bench_search.py)
FAISS_MIN_CANDIDATES, FAISS_CANDIDATE_FRACTION = 2000, 0.01
BACKENDS = ("auto", "exact", "faiss")


@dataclass(frozen=True)
class SearchResult:
    rank: int  # 1 = best
    path: str  # relative to index.root, POSIX separators
    score: float  # cosine similarity of query and audio embedding


class SearchResponse(list):
    """The ranked ``SearchResult`` list; ``notes`` says what the user should know (e.g. a cut-off query)."""

    def __init__(self, results=(), notes=()):
        super().__init__(results)
        self.notes: list[str] = list(notes)


@dataclass(eq=False)
class AudioIndex:
    """Embeddings of a folder's audio files for one model; ``metadata`` summarises how it was built."""

    root: Path
    model_id: str
    paths: list[str]
    embeddings: np.ndarray  # (N, D) float32, unit rows
    durations: np.ndarray | None = None  # decoded length of each file in seconds (before any cut)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    truncated: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    policy: dict = field(default_factory=dict)
    stats: dict = field(default_factory=dict)
    cache_path: Path | None = None
    backend: str = "auto"
    faiss_candidates: int | None = None  # None: max(2000, N/100, 50 top_k)
    _faiss: object = field(default=None, repr=False, compare=False)

    @classmethod
    def from_embeddings(cls, paths, embeddings, model_id: str = "", root=".", **kwargs) -> "AudioIndex":
        """An index of ready-made unit-norm rows (kept without a copy when float32 C-contiguous)."""
        embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
        if embeddings.ndim != 2 or len(paths) != len(embeddings):
            raise ConfigError(f"need one embedding row per path, got {embeddings.shape} for {len(paths)} paths")
        return cls(Path(root), model_id, list(paths), embeddings, **kwargs)

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def metadata(self) -> dict:
        return {"model_id": self.model_id, "root": str(self.root), "files": len(self),
                "dim": int(self.embeddings.shape[1]), "policy": self.policy, "stats": self.stats,
                "skipped": [list(s) for s in self.skipped], "truncated": self.truncated, "notes": self.notes,
                "cache_path": str(self.cache_path) if self.cache_path else None, "backend": self.backend,
                "faiss_threshold": FAISS_THRESHOLD}

    def resolve_backend(self, backend: str | None = None) -> str:
        choice = backend or self.backend
        if choice not in BACKENDS:
            raise ConfigError(f"backend={choice!r}; choose one of {list(BACKENDS)}")
        if choice == "auto":
            return "faiss" if len(self) >= FAISS_THRESHOLD else "exact"
        return choice

    def search_embedding(self, query_vector, top_k: int = 5, backend: str | None = None) -> SearchResponse:
        """Files ranked by cosine with ``query_vector`` (D,) (normalised here)."""
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
            raise ConfigError(f"top_k must be a positive integer, got {top_k!r}")
        q = np.asarray(query_vector, dtype=np.float32).reshape(-1)
        if q.shape[0] != self.embeddings.shape[1]:
            raise ConfigError(f"query vector has {q.shape[0]} dimensions, the index {self.embeddings.shape[1]}")
        norm = float(np.linalg.norm(q))
        if not np.isfinite(norm) or norm == 0:
            raise ConfigError("query vector is zero or not finite")
        q = q / norm
        top_k = min(top_k, len(self))
        if self.resolve_backend(backend) == "faiss":
            candidates = self._faiss_candidates(q, top_k)
            scores = np.einsum("ij,j->i", self.embeddings[candidates], q)  # no BLAS threads: steady latency
        else:
            # one BLAS thread wakes the other per call (ms on a busy machine): worth it only on large sets
            scores = self.embeddings @ q if len(self) >= 250_000 else np.einsum("ij,j->i", self.embeddings, q)
            candidates = np.arange(len(self))
        if top_k < len(scores):
            part = np.argpartition(scores, len(scores) - top_k)[len(scores) - top_k:]
            candidates, scores = candidates[part], scores[part]
        order = np.lexsort((candidates, -scores))[:top_k]  # best first; ties by position, deterministic
        return SearchResponse(SearchResult(rank, self.paths[candidates[i]], float(scores[i]))
                              for rank, i in enumerate(order, start=1))

    def _faiss_candidates(self, q: np.ndarray, top_k: int) -> np.ndarray:
        wanted = self.faiss_candidates or max(FAISS_MIN_CANDIDATES, math.ceil(FAISS_CANDIDATE_FRACTION * len(self)),
                                              50 * top_k)
        _, ids = self.faiss_index().search(q[None], min(max(wanted, top_k), len(self)))
        return ids[0][ids[0] >= 0]

    def faiss_index(self):
        """The FAISS index, built on first use and kept in memory (codes only: 136 bytes per 1024-d file)."""
        if self._faiss is None:
            try:
                import faiss
            except ImportError as err:
                raise ConfigError("faiss is not installed (pip install faiss-cpu); use backend='exact'") from err
            dim = self.embeddings.shape[1]
            index = faiss.IndexRaBitQFastScan(dim, faiss.METRIC_INNER_PRODUCT, 32, 1)
            index.qb = 8  # query quantised to 8 bits
            step = max(1, len(self) // 65536)
            index.train(np.ascontiguousarray(self.embeddings[::step][:65536]))  # the centroid
            for start in range(0, len(self), 65536):  # slices of a contiguous array: no copy
                index.add(self.embeddings[start:start + 65536])
            self._faiss = index
        return self._faiss


def model_id_of(checkpoint) -> str:
    """The first 16 hex digits of the checkpoint's sha256."""
    return file_digest(Path(checkpoint))[:16]


def load_search_model(checkpoint, device: str = "cpu"):
    """(model, Stage1Config, model_id) for any stage-1 or stage-2 checkpoint of this project."""
    from salsa_lib.stage1 import load_member

    model, config = load_member(checkpoint)  # every way a file can be unfit is a ConfigError there
    return model.to(device), config, model_id_of(checkpoint)


@contextlib.contextmanager
def _eval_mode(model):
    training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(training)


def _scan(root: Path):
    """(relative path, path, size, mtime_ns) of every audio file below ``root``; hidden names skipped."""
    found, failed = [], []
    for folder, subfolders, names in os.walk(root):
        subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))
        for name in sorted(names):
            if name.startswith(".") or os.path.splitext(name)[1].lower() not in AUDIO_EXTENSIONS:
                continue
            path = Path(folder) / name
            rel = path.relative_to(root).as_posix()
            try:
                stat = path.stat()
            except OSError as err:
                failed.append((rel, f"cannot read ({err.strerror or err})"))
                continue
            found.append((rel, path, stat.st_size, stat.st_mtime_ns))
    return found, failed


def _read_cache(path: Path, meta: dict):
    """{rel: (size, mtime, embedding, duration)}, {rel: (size, mtime, reason)}, note (None if fine)."""
    if not path.exists():
        return {}, {}, None
    try:
        with np.load(path, allow_pickle=False) as archive:
            if json.loads(str(archive["meta"])) != meta:
                return {}, {}, f"embedding cache {path} belongs to another model or policy; rebuilt"
            a = {k: archive[k] for k in archive.files}
        n, bad = len(a["paths"]), len(a["bad_paths"])
        if not (a["embeddings"].shape == (n, meta["dim"]) and len(a["sizes"]) == len(a["mtimes"]) == n
                and len(a["durations"]) == n and len(a["bad_sizes"]) == len(a["bad_reasons"]) == bad):
            raise ValueError("inconsistent array shapes")
        good = {str(p): (int(s), int(m), a["embeddings"][i], float(a["durations"][i]))
                for i, (p, s, m) in enumerate(zip(a["paths"], a["sizes"], a["mtimes"]))}
        failed = {str(p): (int(s), int(m), str(r))
                  for p, s, m, r in zip(a["bad_paths"], a["bad_sizes"], a["bad_mtimes"], a["bad_reasons"])}
        return good, failed, None
    except Exception as err:  # zip, JSON, key, shape errors alike: the cache is just rebuilt
        return {}, {}, f"embedding cache {path} was unreadable ({type(err).__name__}: {err}); rebuilt"


def _write_cache(path: Path, meta: dict, files, embeddings, durations, bad) -> None:
    def column(rows, i, dtype):
        return np.array([row[i] for row in rows], dtype=dtype)

    arrays = dict(meta=np.array(json.dumps(meta, sort_keys=True)), embeddings=embeddings, durations=durations,
                  paths=column(files, 0, str), sizes=column(files, 2, np.int64), mtimes=column(files, 3, np.int64),
                  bad_paths=column(bad, 0, str), bad_sizes=column(bad, 1, np.int64),
                  bad_mtimes=column(bad, 2, np.int64), bad_reasons=column(bad, 3, str))
    with atomic_path(path, suffix=".npz") as tmp, open(tmp, "wb") as handle:
        np.savez(handle, **arrays)


def _audio_fraction(samples: int, n_windows: int, window: int) -> float:
    """samples / padded length, nudged if float32 rounding would make the model keep a window too few."""
    fraction = samples / (n_windows * window)
    if math.ceil(float(np.float32(fraction) * np.float32(n_windows))) != n_windows:
        fraction = (n_windows - 0.5) / n_windows
    return fraction


def _embed_files(model, todo, limit: int, batch_size: int, progress: bool):
    """Embed ``todo`` [(rel, path)]: {rel: (embedding, duration in s before any cut)}, {rel: reason}."""
    window = model.audio_encoder.window_samples
    device = next(model.parameters()).device
    done, failed, pending = {}, {}, {}

    def flush(n_windows: int) -> None:
        items = pending.pop(n_windows)
        batch = np.zeros((len(items), n_windows * window), dtype=np.float32)
        for row, (_, wave, _) in zip(batch, items):
            row[:len(wave)] = wave
        lengths = torch.tensor([_audio_fraction(len(w), n_windows, window) for _, w, _ in items])
        with warnings.catch_warnings():  # torch/hear21passt deprecation notices, once per process: noise here
            warnings.filterwarnings("ignore", message=".*(return_complex|autocast)")
            vectors = model.embed_audio(torch.from_numpy(batch).to(device), lengths.to(device))
        vectors = vectors.float().cpu().numpy()
        done.update({rel: (vector, duration) for (rel, _, duration), vector in zip(items, vectors)})

    for rel, path in tqdm(todo, desc="embedding audio", unit="file", disable=not progress or not todo):
        try:
            wave = load_audio(path, SAMPLE_RATE)
        except DataError as err:
            failed[rel] = getattr(err, "reason", str(err))
            continue
        duration = len(wave) / SAMPLE_RATE
        wave = wave[:limit]
        n_windows = math.ceil(len(wave) / window)
        pending.setdefault(n_windows, []).append((rel, wave, duration))
        if len(pending[n_windows]) * n_windows >= max(batch_size, n_windows):  # batch_size: windows per pass
            flush(n_windows)
        elif sum(len(v) * k for k, v in pending.items()) > 4 * max(batch_size, n_windows):  # bound memory
            flush(max(pending, key=lambda k: len(pending[k]) * k))
    for n_windows in list(pending):
        flush(n_windows)
    return done, failed


def build_index(audio_dir, model, model_id: str, *, cache_path=None, seconds: float | None = None,
                max_seconds: float = 600.0, batch_size: int = 16, progress: bool = True,
                rebuild: bool = False, backend: str = "auto") -> AudioIndex:
    """Index every wav/flac/ogg/mp3 file below ``audio_dir`` (recursive, case-insensitive extensions).

    Length policy and cache: see the module docstring (``index.policy`` records it). ``seconds``: embed
    only each file's first ``seconds`` (default: whole files up to ``max_seconds``). ``batch_size``: model
    windows per forward pass. ``rebuild``: ignore the cache. Unreadable files are skipped and listed in
    ``index.skipped``; a folder without readable audio raises DataError.
    """
    root = Path(audio_dir).expanduser()
    if not root.is_dir():
        raise DataError(f"audio folder {root} does not exist or is not a folder")
    if seconds is not None and not seconds > 0 or not max_seconds > 0 or batch_size < 1:
        raise ConfigError(f"need seconds > 0 (or None), max_seconds > 0, batch_size >= 1; got "
                          f"{seconds}, {max_seconds}, {batch_size}")
    window_seconds = model.audio_encoder.window_samples / SAMPLE_RATE
    limit_seconds = min(seconds, max_seconds) if seconds else max_seconds
    limit = int(round(limit_seconds * SAMPLE_RATE))
    policy = {"sample_rate": SAMPLE_RATE, "window_seconds": window_seconds, "seconds": seconds,
              "max_seconds": max_seconds, "rule": "decode to 32 kHz mono; embed the first "
              f"{limit_seconds:g} s (whole file if shorter), zero-padded to whole {window_seconds:g} s windows, "
              "masked mean over the windows that hold audio"}
    meta = {"format": CACHE_FORMAT, "model_id": model_id, "policy": policy,
            "dim": int(model.project_audio.out_features)}
    cache_path = Path(cache_path) if cache_path else root / ".salsa_index" / f"{model_id}.npz"
    files, skipped = _scan(root)
    if not files and not skipped:
        raise DataError(f"no audio files ({', '.join(AUDIO_EXTENSIONS)}) in {root}")
    cached, cached_bad, note = ({}, {}, None) if rebuild else _read_cache(cache_path, meta)
    notes = [note] if note else []
    todo, reasons, reused = [], {}, {}
    for rel, path, size, mtime in files:
        if cached.get(rel, (None, None))[:2] == (size, mtime):
            reused[rel] = cached[rel][2:]
        elif cached_bad.get(rel, (None, None))[:2] == (size, mtime):
            reasons[rel] = cached_bad[rel][2]
        else:
            todo.append((rel, path))
    with _eval_mode(model):
        done, failed = _embed_files(model, todo, limit, batch_size, progress)
    reasons.update(failed)
    done.update(reused)
    kept = [f for f in files if f[0] in done]
    bad = [(rel, size, mtime, reasons[rel]) for rel, _, size, mtime in files if rel in reasons]
    skipped += [(rel, reason) for rel, _, _, reason in bad]
    if not kept:
        listing = "; ".join(f"{rel} ({reason})" for rel, reason in skipped[:5])
        raise DataError(f"none of the {len(skipped)} audio files in {root} could be read: {listing}")
    dim = meta["dim"]
    embeddings = np.stack([done[f[0]][0] for f in kept]).astype(np.float32).reshape(-1, dim)
    durations = np.array([done[f[0]][1] for f in kept], dtype=np.float64)
    truncated = [f[0] for f in kept if round(done[f[0]][1] * SAMPLE_RATE) > limit and seconds is None]
    if truncated:
        notes.append(f"{len(truncated)} file(s) longer than {max_seconds:g} s were cut to their first "
                     f"{max_seconds:g} s: {', '.join(truncated[:10])}")
    stats = {"reused": len(reused), "embedded": len(todo) - len(failed),
             "removed": len((set(cached) | set(cached_bad)) - {f[0] for f in files})}
    if todo or note or rebuild or stats["removed"] or not cache_path.exists():
        try:
            _write_cache(cache_path, meta, kept, embeddings, durations, bad)
        except OSError as err:
            notes.append(f"could not write the embedding cache {cache_path} ({err}); searching without it")
    return AudioIndex(root, model_id, [f[0] for f in kept], embeddings, durations, skipped, truncated, notes,
                      policy, stats, cache_path, backend)


def check_query(query: str) -> str:
    """The query as the text encoder sees it (lowercase, no punctuation); ConfigError if that is empty."""
    if not isinstance(query, str) or not query.strip():
        raise ConfigError(f"empty query {query!r}: describe the sound you are looking for, e.g. 'a dog barks'")
    text = preprocess_caption(query)
    if not text:
        raise ConfigError(f"empty query {query!r}: nothing is left once punctuation is removed")
    return text


def embed_query(model, query: str) -> tuple[np.ndarray, list[str]]:
    """The query's unit embedding (D,) and notes (cut-off query, unknown characters)."""
    text, notes, encoder = check_query(query), [], model.text_encoder
    ids = encoder.tokenizer(text)["input_ids"]
    if len(ids) > encoder.max_length:
        notes.append(f"the query has {len(ids)} tokens; the model reads only the first {encoder.max_length} "
                     "(the rest was ignored)")
    if encoder.tokenizer.unk_token_id is not None and encoder.tokenizer.unk_token_id in ids:
        notes.append("parts of the query (e.g. emoji or rare scripts) are unknown to the text encoder "
                     "and were read as [UNK]")
    with _eval_mode(model):
        return model.embed_text([query])[0].float().cpu().numpy(), notes


def search(index: AudioIndex, model, model_id: str, query: str, top_k: int = 5,
           backend: str | None = None) -> SearchResponse:
    """The ``top_k`` files best matching ``query``; ``response.notes`` flags e.g. a cut-off query."""
    if model_id != index.model_id:
        raise ConfigError(f"the index was built with model {index.model_id!r} but the search uses model "
                          f"{model_id!r}; rebuild the index with this model")
    vector, notes = embed_query(model, query)
    response = index.search_embedding(vector, top_k, backend)
    response.notes.extend(notes)
    return response


def search_embedding(index: AudioIndex, query_vector, top_k: int = 5, backend: str | None = None) -> SearchResponse:
    return index.search_embedding(query_vector, top_k, backend)
