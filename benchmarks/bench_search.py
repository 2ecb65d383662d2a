"""Search benchmark: exact vs FAISS query latency over random unit vectors, FAISS recall@10 and build
time, and the indexing throughput of a folder of generated 5 s clips with a small random model.

Random unit vectors have no cluster structure: a worst case for approximate search (real embeddings
cluster, so FAISS needs fewer candidates for the same recall). Writes results/benchmarks/search.json.

    nice .venv/bin/python benchmarks/bench_search.py [--sizes 10000,100000,1000000] [--queries 100]
        [--dim 1024] [--clips 40]

1M x 1024 float32 is 4 GB; the vectors are generated in place (no second copy), the FAISS index
holds only 1-bit codes (136 MB), so the peak stays near 5 GB. About 3 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import platform
import resource
import tempfile
import time
from pathlib import Path

import numpy as np

from salsa_lib import paths, retrieval
from salsa_lib.files import atomic_write_json

TOP_K = 10
TARGET = {"size": 1_000_000, "p50_ms": 50.0, "recall_at_10": 0.95}


def unit_vectors(n: int, dim: int, rng: np.random.Generator) -> np.ndarray:
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, 65536):
        block = out[start:start + 65536]
        block[:] = rng.standard_normal(block.shape, dtype=np.float32)
        block /= np.linalg.norm(block, axis=1, keepdims=True)
    return out


def timed_queries(index, queries, backend: str):
    for q in queries[:3]:  # warm-up: caches, thread pools, the lazily built FAISS index
        index.search_embedding(q, TOP_K, backend)
    times, results = [], []
    for q in queries:
        start = time.perf_counter()
        response = index.search_embedding(q, TOP_K, backend)
        times.append(time.perf_counter() - start)
        results.append({r.path for r in response})
    ms = 1000 * np.array(times)
    return round(float(np.percentile(ms, 50)), 2), round(float(np.percentile(ms, 95)), 2), results


def bench_size(n: int, dim: int, n_queries: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    start = time.perf_counter()
    vectors = unit_vectors(n, dim, rng)
    generate_s = time.perf_counter() - start
    index = retrieval.AudioIndex.from_embeddings([f"clip{i:07d}.wav" for i in range(n)], vectors, "random")
    queries = unit_vectors(n_queries, dim, rng)
    exact_p50, exact_p95, truth = timed_queries(index, queries, "exact")
    start = time.perf_counter()
    index.faiss_index()
    build_s = time.perf_counter() - start
    faiss_p50, faiss_p95, found = timed_queries(index, queries, "faiss")
    recall = float(np.mean([len(a & b) / TOP_K for a, b in zip(truth, found)]))
    candidates = min(n, max(retrieval.FAISS_MIN_CANDIDATES, math.ceil(retrieval.FAISS_CANDIDATE_FRACTION * n),
                            50 * TOP_K))
    row = {"size": n, "generate_s": round(generate_s, 1), "exact_p50_ms": exact_p50, "exact_p95_ms": exact_p95,
           "faiss_build_s": round(build_s, 2), "faiss_p50_ms": faiss_p50, "faiss_p95_ms": faiss_p95,
           "faiss_recall_at_10": round(recall, 3), "faiss_candidates_reranked": candidates,
           "auto_backend": index.resolve_backend()}
    del index, vectors
    gc.collect()
    return row


def bench_indexing(n_clips: int, seconds: float = 5.0) -> dict:
    import soundfile as sf
    import torch

    from salsa_lib.audio import load_audio
    from salsa_lib.config import Stage1Config
    from salsa_lib.model import build_dual_encoder

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
    parser.add_argument("--sizes", default="10000,100000,1000000", help="comma-separated collection sizes")
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--clips", type=int, default=40, help="generated 5 s clips for the indexing figure (0: skip)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    import faiss

    sizes = [int(s) for s in args.sizes.split(",")]
    rows = []
    for n in sizes:
        rows.append(bench_size(n, args.dim, args.queries, args.seed))
        print(f"size {n}: done", flush=True)
    indexing = bench_indexing(args.clips) if args.clips else None
    target = next((r for r in rows if r["size"] == TARGET["size"] and args.dim == 1024), None)
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M"), "machine": f"{platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, {platform.system()}", "numpy": np.__version__, "faiss": faiss.__version__,
        "dim": args.dim, "queries": args.queries, "top_k": TOP_K, "data": "random unit vectors (no structure)",
        "faiss_index": "IndexRaBitQFastScan(d, METRIC_INNER_PRODUCT, bbs=32, nb_bits=1), qb=8; candidates "
                       f"max({retrieval.FAISS_MIN_CANDIDATES}, ceil({retrieval.FAISS_CANDIDATE_FRACTION} N), "
                       "50 top_k) re-ranked exactly with the float32 embeddings",
        "auto_faiss_threshold": retrieval.FAISS_THRESHOLD, "search": rows, "indexing": indexing,
        "target": {**TARGET, "met": None if target is None else
                   target["faiss_p50_ms"] <= TARGET["p50_ms"] and target["faiss_recall_at_10"] >= TARGET["recall_at_10"]},
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
    }
    out_path = paths.results_dir("benchmarks") / "search.json"
    atomic_write_json(out_path, result)
    print(f"\n{'size':>9} {'exact p50':>10} {'exact p95':>10} {'faiss p50':>10} {'faiss p95':>10} "
          f"{'recall@10':>9} {'build s':>8} {'rerank':>7}")
    for r in rows:
        print(f"{r['size']:>9} {r['exact_p50_ms']:>8.1f}ms {r['exact_p95_ms']:>8.1f}ms {r['faiss_p50_ms']:>8.1f}ms "
              f"{r['faiss_p95_ms']:>8.1f}ms {r['faiss_recall_at_10']:>9.3f} {r['faiss_build_s']:>8.1f} "
              f"{r['faiss_candidates_reranked']:>7}")
    if indexing:
        print(f"\nindexing {indexing['clips']} x {indexing['clip_seconds']:g} s clips: {indexing['index_files_per_s']} "
              f"files/s cold ({indexing['decode_files_per_s']} files/s decoding alone), "
              f"{indexing['cached_rebuild_files_per_s']} files/s from the cache")
    print(f"target (1M: p50 <= 50 ms, recall@10 >= 0.95) met: {result['target']['met']}; "
          f"peak RSS {result['peak_rss_gb']} GB\nwritten to {out_path}")


if __name__ == "__main__":
    main()
