"""Search benchmark at scale: query latency, recall@10 against exact search, build time and index
memory of the FAISS index, on two kinds of 1024-d unit vectors, plus the indexing throughput of a
folder of generated 5 s clips with a small random model. Writes results/benchmarks/search.json.

Vector kinds. ``random``: i.i.d. Gaussian directions, no structure at all (a worst case: the ten
nearest rows are barely nearer than the rest, so any index must look at most of them).
``clustered``: a generator with the structure of real embeddings (no trained model is needed):
5,000 cluster centres in a 64-d latent space, mapped to 1024-d with a decaying spectrum, each row
a centre plus spread plus 2 % isotropic noise; queries are held-out rows perturbed further.

Index kinds (salsa_lib.search.vector_index): ``ivf`` (inverted file of 1-bit RaBitQ codes re-ranked with
8-bit rows, the product's from 300k rows) and ``flat`` (every 1-bit code scanned, same re-ranking,
below 300k), each with nprobe / re-ranking depth as calibrated at build; ``flat`` also at fixed depths. Goal at 1 M rows: p50 <= 10 ms at recall@10 >= 0.95, index <= 2 GB.

    nice python benchmarks/bench_search.py [--sizes 100000,1000000] [--kinds random,clustered]
        [--queries 100] [--clips 40]

1M x 1024 float32 is 4 GB (the ground truth needs them); peak RSS about 7 GB; ~8 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import resource
import tempfile
import time
from pathlib import Path

import numpy as np

from salsa_lib import paths
from salsa_lib.files import atomic_write_json
from salsa_lib.search import retrieval, vector_index
from salsa_lib.stages import precision

TOP_K = 10
TARGET = {"size": 1_000_000, "p50_ms": 10.0, "recall_at_10": 0.95, "index_gb": 2.0}
FLAT_K_FACTORS = (50, 300, 1000)


def _unit(block: np.ndarray) -> np.ndarray:
    block /= np.linalg.norm(block, axis=1, keepdims=True)
    return block


def vectors(kind: str, n: int, dim: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` unit rows of the given kind, generated in place in 64k-row blocks (no second copy)."""
    out = np.empty((n, dim), dtype=np.float32)
    if kind == "clustered":
        rank = 64
        basis = np.linalg.qr(rng.standard_normal((dim, rank)))[0].T * (np.arange(1, rank + 1) ** -0.5)[:, None]
        basis = basis.astype(np.float32)
        centres = rng.standard_normal((5000, rank), dtype=np.float32)
    for start in range(0, n, 65536):
        block = out[start:start + 65536]
        if kind == "random":
            block[:] = rng.standard_normal(block.shape, dtype=np.float32)
        else:
            latent = centres[rng.integers(0, len(centres), len(block))]
            latent += 0.5 * rng.standard_normal(latent.shape, dtype=np.float32)
            block[:] = latent @ basis + 0.02 * rng.standard_normal(block.shape, dtype=np.float32)
        _unit(block)
    return out


def split_queries(kind: str, rows: np.ndarray, n_queries: int, rng) -> tuple[np.ndarray, np.ndarray]:
    """The last ``n_queries`` rows, held out (and, for clustered rows, perturbed) as queries."""
    data, held_out = rows[:-n_queries], rows[-n_queries:].copy()
    if kind == "clustered":  # a caption lands near, not on, the sounds it describes
        held_out = _unit(held_out + 0.15 * _unit(rng.standard_normal(held_out.shape, dtype=np.float32)))
    return data, held_out


def exact_top(data: np.ndarray, queries: np.ndarray) -> list[set]:
    scores = np.empty((len(queries), len(data)), np.float32)
    for start in range(0, len(data), 262144):
        scores[:, start:start + 262144] = queries @ data[start:start + 262144].T
    top = np.argpartition(-scores, TOP_K, axis=1)[:, :TOP_K]
    return [set(row.tolist()) for row in top]


def timed(index, queries, backend: str, truth=None):
    for q in queries[:3]:  # warm-up: caches, thread pools
        index.search_embedding(q, TOP_K, backend)
    times, recalls = [], []
    for i, q in enumerate(queries):
        start = time.perf_counter()
        response = index.search_embedding(q, TOP_K, backend)
        times.append(time.perf_counter() - start)
        if truth is not None:
            recalls.append(len(truth[i] & {int(r.path) for r in response}) / TOP_K)
    ms = 1000 * np.array(times)
    return {"p50_ms": round(float(np.percentile(ms, 50)), 2), "p95_ms": round(float(np.percentile(ms, 95)), 2),
            "recall_at_10": round(float(np.mean(recalls)), 3) if recalls else None}


def _rss() -> int:
    """Resident bytes now (Linux /proc; resource gives only the peak)."""
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def build(index, kind: str) -> dict:
    """Build the FAISS index of ``kind``: seconds, its size (serialised: every code and list it holds) and
    the process's resident growth (a lower bound where freed memory of an earlier index is reused)."""
    import faiss  # lazy, as in salsa_lib.search.vector_index

    index._faiss, index.faiss_kind = None, kind
    gc.collect()
    before, start = _rss(), time.perf_counter()
    built = index.faiss_index()
    seconds, grown = time.perf_counter() - start, _rss() - before
    return {"build_s": round(seconds, 1), "index_gb": round(faiss.serialize_index(built).nbytes / 2**30, 2),
            "rss_growth_gb": round(grown / 2**30, 2)}


def bench_size(kind: str, n: int, dim: int, n_queries: int, seed: int) -> dict:
    import faiss  # lazy, as in salsa_lib.search.vector_index
    rng = np.random.default_rng(seed)
    start = time.perf_counter()
    data, queries = split_queries(kind, vectors(kind, n + n_queries, dim, rng), n_queries, rng)
    generate_s = time.perf_counter() - start
    truth = exact_top(data, queries)
    index = retrieval.AudioIndex.from_embeddings([str(i) for i in range(n)], data, kind)
    row = {"kind": kind, "size": n, "generate_s": round(generate_s, 1),
           "exact": timed(index, queries[:20], "exact")}
    row["ivf"] = build(index, "ivf")
    row["ivf"]["structureless"] = vector_index.structureless(index.faiss_index())
    base = faiss.downcast_index(index.faiss_index().base_index)
    row["ivf"].update(nlist=int(base.nlist), nprobe=int(base.nprobe), k_factor=int(index.faiss_index().k_factor),
                      **timed(index, queries, "faiss", truth))
    row["flat"] = build(index, "flat")
    row["flat"].update(k_factor=int(index.faiss_index().k_factor), **timed(index, queries, "faiss", truth))
    for k_factor in FLAT_K_FACTORS:
        index.k_factor = k_factor
        row["flat"][f"k_factor_{k_factor}"] = timed(index, queries, "faiss", truth)
    for index_kind in ("ivf", "flat"):
        x = row[index_kind]
        x["met"] = (x["p50_ms"] <= TARGET["p50_ms"] and x["recall_at_10"] >= TARGET["recall_at_10"]
                    and x["index_gb"] <= TARGET["index_gb"])
    # the one search uses (faiss_kind "auto"): flat below IVF_FROM rows or where the inverted file found no clusters
    row["used"] = "flat" if n < vector_index.IVF_FROM or row["ivf"]["structureless"] else "ivf"
    del index, data
    gc.collect()
    print(f"{kind} {n}: {row}", flush=True)
    return row


def bench_indexing(n_clips: int, seconds: float = 5.0) -> dict:
    import soundfile as sf
    import torch

    from salsa_lib.config import Stage1Config
    from salsa_lib.core.model import build_dual_encoder
    from salsa_lib.data.audio import load_audio

    torch.manual_seed(0)
    model = build_dual_encoder(Stage1Config(audio_encoder="passt_small", embed_dim=1024, window_seconds=seconds,
                                            eval_seconds=seconds)).eval()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch) / "clips"
        folder.mkdir()
        t = np.arange(int(seconds * 44100)) / 44100
        for i in range(n_clips):  # 44.1 kHz like ClothoV2, so decoding includes resampling
            wave = 0.3 * np.sin(2 * np.pi * rng.uniform(100, 4000) * t) + 0.05 * rng.standard_normal(len(t))
            sf.write(folder / f"clip{i:04d}.wav", wave.astype(np.float32), 44100)
        files = sorted(folder.glob("*.wav"))
        with torch.no_grad():  # warm-up: librosa's lazy imports, the first forward pass
            model.embed_audio(torch.from_numpy(load_audio(files[0]))[None], torch.ones(1))
        start = time.perf_counter()
        for path in files:
            load_audio(path)
        decode_s = time.perf_counter() - start
        start = time.perf_counter()
        index = retrieval.build_index(folder, model, "bench", progress=False)
        cold_s = time.perf_counter() - start
        start = time.perf_counter()
        retrieval.build_index(folder, model, "bench", progress=False)
        warm_s = time.perf_counter() - start
    return {"clips": n_clips, "clip_seconds": seconds, "model": "passt_small (width 192, depth 2), embed_dim 1024, "
            f"window {seconds:g} s, packaged MiniLM", "decode_files_per_s": round(n_clips / decode_s, 1),
            "index_files_per_s": round(n_clips / cold_s, 1), "cached_rebuild_files_per_s": round(n_clips / warm_s, 1),
            "embedded": index.stats["embedded"], "torch_threads": torch.get_num_threads()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100000,1000000", help="comma-separated collection sizes")
    parser.add_argument("--kinds", default="random,clustered", help="vector kinds: random, clustered")
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--clips", type=int, default=40, help="generated 5 s clips for the indexing figure (0: skip)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    import faiss  # lazy, as in salsa_lib.search.vector_index: only for its version here

    rows = [bench_size(kind, int(n), args.dim, args.queries, args.seed)
            for kind in args.kinds.split(",") for n in args.sizes.split(",")]
    indexing = bench_indexing(args.clips) if args.clips else None
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M"), "machine": f"{platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, {platform.system()}", **precision.cpu_record(),
        "numpy": np.__version__, "faiss": faiss.__version__,
        "dim": args.dim, "queries": args.queries, "top_k": TOP_K, "kinds": args.kinds.split(","),
        "index": "ivf: IndexRefine(IndexIVFRaBitQFastScan(~sqrt(N) lists, nprobe), SQ8); flat: "
                 "IndexRefine(IndexRaBitQFastScan(1 bit, qb 8), SQ8); k_factor x top_k rows re-ranked",
        "auto_faiss_threshold": retrieval.FAISS_THRESHOLD, "search": rows, "indexing": indexing,
        "target": {**TARGET, "met": {r["kind"]: r[r["used"]]["met"] for r in rows if r["size"] == TARGET["size"]}},
        "ivf_from": vector_index.IVF_FROM,
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
    }
    out_path = paths.results_dir("benchmarks") / "search.json"
    atomic_write_json(out_path, result)
    print(f"\n(* the index search uses: faiss_kind 'auto')\n{'kind':>9} {'size':>8} {'exact p50':>9} | index  {'p50':>7} {'recall':>6} {'build s':>7} {'GB':>5} "
          f"{'nprobe':>6} {'kf':>5}")
    for r in rows:
        for index_kind in ("ivf", "flat"):
            x, used = r[index_kind], "*" if r["used"] == index_kind else " "
            print(f"{r['kind']:>9} {r['size']:>8} {r['exact']['p50_ms']:>7.1f}ms | {index_kind:<4}{used} {x['p50_ms']:>5.1f}ms "
                  f"{x['recall_at_10']:>6.3f} {x['build_s']:>7.1f} {x['index_gb']:>5.2f} {x.get('nprobe', '-'):>6} "
                  f"{x['k_factor']:>5}")
        print(" " * 31 + "flat at fixed k_factor: " + ", ".join(
            f"{k}: {r['flat'][f'k_factor_{k}']['p50_ms']:.1f} ms / {r['flat'][f'k_factor_{k}']['recall_at_10']:.3f}"
            for k in FLAT_K_FACTORS))
    if indexing:
        print(f"\nindexing {indexing['clips']} x {indexing['clip_seconds']:g} s clips: {indexing['index_files_per_s']} "
              f"files/s cold ({indexing['decode_files_per_s']} files/s decoding alone), "
              f"{indexing['cached_rebuild_files_per_s']} files/s from the cache")
    print(f"goal at 1M (p50 <= {TARGET['p50_ms']:g} ms, recall@10 >= {TARGET['recall_at_10']}, index <= "
          f"{TARGET['index_gb']:g} GB) met by the index search uses there: {result['target']['met']}; peak RSS "
          f"{result['peak_rss_gb']} GB\nwritten to {out_path}")


if __name__ == "__main__":
    main()
