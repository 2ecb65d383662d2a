"""The searchable index: one unit embedding per window of each file, exact or FAISS search.

A row is a window (``starts``/``ends`` in seconds) of a file (``file_of``, rows of one file are
contiguous and in time order). A file's score is its best window's score, so a short event in a
long recording is found and its moment reported; ``per_file=False`` lists every window instead.

**Backends.** ``exact``: one matrix-vector product. ``faiss``: an inverted file (~sqrt(N) k-means
lists, ``NPROBE`` visited) of 1-bit RaBitQ fast-scan codes (136 bytes per 1024-d row) proposes
``k_factor × k`` rows, re-ranked with 8-bit scalar-quantised rows (``faiss.IndexRefine`` over
``IndexScalarQuantizer(QT_8bit)``): 1.1 GB per million 1024-d rows instead of 4 GB of float32; the
scores shown are recomputed from the float32 rows while the index holds them. nprobe and k_factor
are raised at build until a recall check passes (``calibrate``); rows without cluster structure
get the flat scan instead (``structureless``). Chosen from
``benchmarks/bench_search.py``: below ``IVF_FROM`` rows every code is scanned instead (``flat``:
faster there, no k-means); at 1 M clustered rows the inverted file answers in less time than the
scan at higher recall; HNSW's graph takes far longer than a few minutes to build at 1 M x 1024 on
2 cores. On structureless rows no index is fast: the recall check then raises k_factor, trading
speed for recall. ``auto`` uses FAISS from ``FAISS_THRESHOLD`` rows.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from salsa_lib.errors import ConfigError

FAISS_THRESHOLD = 100_000  # below: exact search takes <= ~20 ms on 2 cores (benchmarks/bench_search.py)
NPROBE = 32  # inverted lists visited per query (of ~sqrt(N)) at least; raised at build until recall@10 >= 0.95
IVF_FROM = 300_000  # bench_search.py: scanning all codes wins at 100k rows, the inverted file at 1M
K_FACTOR = 50  # rows re-ranked with 8-bit codes per wanted row at least (cheap: < 1 ms); raised at build if needed
BACKENDS = ("auto", "exact", "faiss")


def format_time(seconds: float) -> str:
    """03:20, 1:03:20 from an hour on, 00:01.5 where a (short) window starts between seconds."""
    tenths = int(round(seconds * 10))
    hours, rest = divmod(tenths // 10, 3600)
    text = f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60:02d}:{rest % 60:02d}"
    return text + (f".{tenths % 10}" if tenths % 10 else "")


@dataclass(frozen=True)
class SearchResult:
    rank: int  # 1 = best
    path: str  # relative to index.root, POSIX separators
    score: float  # cosine similarity of query and the window's embedding
    start: float = 0.0  # the matching window, seconds from the file's start
    end: float = 0.0

    @property
    def span(self) -> str:
        return f"{format_time(self.start)}–{format_time(self.end)}"


class SearchResponse(list):
    """The ranked ``SearchResult`` list; ``notes`` says what the user should know (e.g. a cut-off query)."""

    def __init__(self, results=(), notes=()):
        super().__init__(results)
        self.notes: list[str] = list(notes)


@dataclass(eq=False)
class AudioIndex:
    """Window embeddings of a folder's sound files for one model, and how they were made."""

    root: Path
    model_id: str
    paths: list[str]  # files
    embeddings: np.ndarray | None  # (W, D) float32 unit rows; None once dropped for the FAISS index
    file_of: np.ndarray  # (W,) int, file of each window, non-decreasing
    starts: np.ndarray  # (W,) seconds
    ends: np.ndarray  # (W,) seconds (the audio's end for a padded last window)
    durations: np.ndarray | None = None  # (F,) seconds
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    non_audio: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    policy: dict = field(default_factory=dict)
    stats: dict = field(default_factory=dict)
    cache_path: Path | None = None
    backend: str = "auto"
    k_factor: int | None = None  # rows re-ranked per result; None: as calibrated at build
    faiss_kind: str = "auto"  # "flat", "ivf", or by size and structure (build_faiss)
    _faiss: object = field(default=None, repr=False, compare=False)

    @classmethod
    def from_embeddings(cls, paths, embeddings, model_id: str = "", root=".", **kwargs) -> "AudioIndex":
        """One window per file, for ready-made unit rows (kept without a copy when float32 C-contiguous)."""
        embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
        if embeddings.ndim != 2 or len(paths) != len(embeddings):
            raise ConfigError(f"need one embedding row per path, got {embeddings.shape} for {len(paths)} paths")
        n = len(paths)
        return cls(Path(root), model_id, list(paths), embeddings, np.arange(n), np.zeros(n, np.float32),
                   np.zeros(n, np.float32), **kwargs)

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def windows(self) -> int:
        return len(self.file_of)

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1]) if self.embeddings is not None else int(self._faiss.d)

    @property
    def metadata(self) -> dict:
        return {"model_id": self.model_id, "root": str(self.root), "files": len(self), "windows": self.windows,
                "dim": self.dim, "policy": self.policy, "stats": self.stats, "notes": self.notes,
                "skipped": [list(s) for s in self.skipped], "non_audio": len(self.non_audio),
                "cache_path": str(self.cache_path) if self.cache_path else None, "backend": self.backend,
                "faiss_threshold": FAISS_THRESHOLD}

    def resolve_backend(self, backend: str | None = None) -> str:
        choice = backend or self.backend
        if choice not in BACKENDS:
            raise ConfigError(f"backend={choice!r}; choose one of {list(BACKENDS)}")
        if choice == "auto":
            return "faiss" if self.windows >= FAISS_THRESHOLD or self.embeddings is None else "exact"
        if choice == "exact" and self.embeddings is None:
            raise ConfigError("this index keeps only its FAISS codes (drop_vectors); use backend='faiss'")
        return choice

    def search_embedding(self, query_vector, top_k: int = 5, backend: str | None = None,
                         per_file: bool = True) -> SearchResponse:
        """Best ``top_k`` files (their best window each) or, ``per_file=False``, windows for a query (D,)."""
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
            raise ConfigError(f"top_k must be a positive integer, got {top_k!r}")
        q = self._unit_query(query_vector)
        wanted = min(top_k, len(self) if per_file else self.windows)
        if self.resolve_backend(backend) == "faiss":
            rows, scores = self._faiss_rows(q, wanted, per_file)
        else:
            rows, scores = self._exact_rows(q, wanted, per_file)
        order = np.lexsort((rows, -scores))[:wanted]  # best first; ties by position, deterministic
        return SearchResponse(SearchResult(rank, self.paths[self.file_of[rows[i]]], float(scores[i]),
                                           float(self.starts[rows[i]]), float(self.ends[rows[i]]))
                              for rank, i in enumerate(order, start=1))

    def _unit_query(self, query_vector) -> np.ndarray:
        q = np.asarray(query_vector, dtype=np.float32).reshape(-1)
        if q.shape[0] != self.dim:
            raise ConfigError(f"query vector has {q.shape[0]} dimensions, the index {self.dim}")
        norm = float(np.linalg.norm(q))
        if not np.isfinite(norm) or norm == 0:
            raise ConfigError("query vector is zero or not finite")
        return q / norm

    def _exact_rows(self, q, wanted: int, per_file: bool):
        # one BLAS thread wakes the other per call (ms on a busy machine): worth it only on large sets
        scores = self.embeddings @ q if self.windows >= 250_000 else np.einsum("ij,j->i", self.embeddings, q)
        if per_file:  # each file's best window
            first = np.flatnonzero(np.r_[True, self.file_of[1:] != self.file_of[:-1]])
            best = np.maximum.reduceat(scores, first)
            top = _top(best, wanted)
            ends = np.r_[first[1:], self.windows]
            rows = np.array([first[f] + int(np.argmax(scores[first[f]:ends[f]])) for f in top], dtype=np.int64)
            return rows, scores[rows]
        rows = _top(scores, wanted)
        return rows, scores[rows]

    def _faiss_rows(self, q, wanted: int, per_file: bool):
        index, k = self.faiss_index(), wanted
        while True:  # per file: ask for more windows until ``wanted`` distinct files are among them
            k = min(max(k, wanted), self.windows)
            params = None if self.k_factor is None else _refine_params(self.k_factor)
            with _one_thread():
                scores, rows = index.search(q[None], k, params=params)
            rows, scores = rows[0], scores[0]
            keep = rows >= 0
            rows, scores = rows[keep], scores[keep]
            if per_file:
                _, firsts = np.unique(self.file_of[rows], return_index=True)  # rows come best first
                rows, scores = rows[firsts], scores[firsts]
            if len(rows) >= wanted or k >= self.windows:
                break
            k *= 4
        if self.embeddings is not None:  # exact cosines for the few rows shown
            scores = np.einsum("ij,j->i", self.embeddings[rows], q)
        return rows, scores

    def faiss_index(self):
        """The FAISS index, built on first use and kept: 1-bit codes + 8-bit rows (see module docstring)."""
        if self._faiss is None:
            self._faiss = build_faiss(self.embeddings, self.faiss_kind)
        return self._faiss

    def drop_vectors(self) -> None:
        """Keep only the FAISS index (1.2 GB instead of 4 GB per million 1024-d rows); exact search ends."""
        self.faiss_index()
        self.embeddings = None


def _top(scores: np.ndarray, k: int) -> np.ndarray:
    if k >= len(scores):
        return np.arange(len(scores))
    return np.argpartition(scores, len(scores) - k)[len(scores) - k:]


def build_faiss(embeddings: np.ndarray, kind: str = "auto", chunk: int = 65536):
    """IndexRefine(RaBitQ fast scan, SQ8): ``ivf`` behind an inverted file, ``flat`` scans every code.

    ``auto``: ``ivf`` from ``IVF_FROM`` rows, unless the rows turn out structureless (see
    ``structureless``), then ``flat``. Trained on at most ``chunk`` rows, filled in slices of the
    float32 rows (never a second full copy).
    """
    if kind == "auto":
        if len(embeddings) < IVF_FROM:
            return build_faiss(embeddings, "flat", chunk)
        index = build_faiss(embeddings, "ivf", chunk)
        return build_faiss(embeddings, "flat", chunk) if structureless(index) else index
    try:
        import faiss  # lazy: only large collections need it, and it is slow to import
    except ImportError as err:
        raise ConfigError("faiss is not installed (pip install faiss-cpu); use backend='exact'") from err
    n, dim = embeddings.shape
    if kind == "ivf":
        nlist = int(max(1, min(4096, round(n ** 0.5), n // 39)))  # faiss wants >= 39 training rows per list
        base = faiss.IndexIVFRaBitQFastScan(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT, 32)
        base.nprobe = min(nlist, NPROBE)
        base.cp.min_points_per_centroid = 1  # no stderr warning about small training sets
    elif kind == "flat":
        base = faiss.IndexRaBitQFastScan(dim, faiss.METRIC_INNER_PRODUCT, 32, 1)
        base.qb = 8  # query quantised to 8 bits
    else:
        raise ConfigError(f"faiss index kind {kind!r}; choose 'ivf' or 'flat'")
    refine = faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT)
    index = faiss.IndexRefine(base, refine)
    step = max(1, n // chunk)
    index.train(np.ascontiguousarray(embeddings[::step][:chunk]))
    for start in range(0, n, chunk):
        index.add(np.ascontiguousarray(embeddings[start:start + chunk]))
    index.k_factor = K_FACTOR
    calibrate(index, base, embeddings)
    return index


def structureless(index) -> bool:
    """True when the recall check had the inverted file visit over a quarter of its lists: no clusters
    to exploit, so scanning every code (no list overhead) is faster for the same recall."""
    import faiss  # lazy, see build_faiss

    base = faiss.downcast_index(index.base_index)
    return hasattr(base, "nprobe") and 4 * base.nprobe > base.nlist


def calibrate(index, base, embeddings: np.ndarray, target: float = 0.95, n_queries: int = 32) -> float:
    """Raise nprobe (ivf), then the re-ranking depth, until recall@10 on probe queries reaches ``target``.

    The index is fast only where the rows cluster, as real embeddings do; on structureless rows it
    would silently miss most neighbours, so it is made slower instead. Probe queries are stored rows
    pushed halfway to random directions (a caption lands near, not on, its sounds); their exact top 10
    costs one pass over the rows. Returns the recall reached (capped at nprobe = nlist, k_factor 3200).
    """
    rng = np.random.default_rng(0)
    rows = embeddings[np.sort(rng.choice(len(embeddings), min(n_queries, len(embeddings)), replace=False))]
    noise = rng.standard_normal(rows.shape).astype(np.float32)
    queries = rows + noise / np.linalg.norm(noise, axis=1, keepdims=True)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    k = min(10, len(embeddings))
    scores = np.concatenate([queries @ embeddings[s:s + 262144].T for s in range(0, len(embeddings), 262144)], axis=1)
    truth = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    ivf = hasattr(base, "nprobe")
    while True:
        _, found = index.search(queries, k)
        recall = float(np.mean([len(set(t) & set(f)) / k for t, f in zip(truth, found)]))
        if recall >= target or index.k_factor >= 3200 or len(embeddings) <= k * index.k_factor:
            return recall
        if ivf and base.nprobe < base.nlist:
            base.nprobe = min(base.nlist, 2 * base.nprobe)
        else:
            index.k_factor *= 2


@contextlib.contextmanager
def _one_thread():
    """One query, one OpenMP thread: waking a second one cost the inverted file's scan ~8 ms per query
    on 2 cores (0.95 ms instead of 8 ms at 300k rows), more than it could save."""
    import faiss  # lazy, see build_faiss

    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(threads)


def _refine_params(k_factor: int):
    import faiss  # lazy, see build_faiss

    params = faiss.IndexRefineSearchParameters()
    params.k_factor = float(k_factor)
    return params
