"""Correspondence benchmark: the full-split ensemble estimate at ClothoV2 development size.

Notebook 02 computes the ensemble's mean cosine for every (clip, caption) pair of the training split
(``correspondences.full_split_similarity``). At ClothoV2 development size (3,839 clips x 19,195
captions) the issue's target is at most about 2 GB at once. This script feeds it random unit
embeddings of that size, 1024-d, stored as fp16 like notebook 02 stores them, for M teachers, and
measures wall time and the peak resident memory added by stacking the teachers and computing the
estimate (psutil, polled every 5 ms in a thread, relative to the RSS just before). The block-wise
result is checked against a direct computation on a slice. Writes results/benchmarks/correspondences.json.

    .venv/bin/python benchmarks/bench_correspondences.py [--teachers 3 5] [--clips 3839] [--block 2048]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import threading
import time

import numpy as np
import psutil
import torch

from salsa_lib import paths
from salsa_lib.files import atomic_write_json
from salsa_lib.stages import precision
from salsa_lib.stages.correspondences import full_split_similarity, stack_teachers

TARGET_GB = 2.0


class PeakRSS:
    """Highest RSS of this process while the block runs, polled in a background thread."""

    def __init__(self, interval: float = 0.005):
        self.interval, self.process = interval, psutil.Process()

    def __enter__(self):
        self.baseline = self.peak = self.process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def _poll(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(self.interval)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.process.memory_info().rss)

    @property
    def added_gb(self) -> float:
        return (self.peak - self.baseline) / 1e9


def _payloads(n_teachers: int, n_clips: int, dim: int, seed: int) -> list[dict]:
    generator = torch.Generator().manual_seed(seed)

    def unit(rows):
        x = torch.randn(rows, dim, generator=generator)
        return torch.nn.functional.normalize(x, dim=-1).half()

    return [{"member": f"member{k}", "audio": unit(n_clips), "captions": unit(5 * n_clips)} for k in range(n_teachers)]


def measure(n_teachers: int, n_clips: int, dim: int, block: int) -> dict:
    payloads = _payloads(n_teachers, n_clips, dim, seed=n_teachers)
    inputs_gb = sum(p["audio"].nbytes + p["captions"].nbytes for p in payloads) / 1e9
    with PeakRSS() as memory:
        start = time.perf_counter()
        audio, captions = stack_teachers(payloads)
        similarity = full_split_similarity(audio, captions, block=block)
        seconds = time.perf_counter() - start
    rows = slice(0, 64)
    direct = torch.einsum("mad,mcd->ac", audio[:, rows], captions[:, :block + 7]).numpy() / n_teachers
    assert np.allclose(similarity[rows, :block + 7], direct, atol=1e-5), "block-wise estimate differs from direct"
    return {"teachers": n_teachers, "clips": n_clips, "captions": 5 * n_clips, "dim": dim, "block": block,
            "seconds": round(seconds, 2), "peak_added_gb": round(memory.added_gb, 3),
            "result_gb": round(similarity.nbytes / 1e9, 3), "fp16_inputs_gb": round(inputs_gb, 3)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teachers", type=int, nargs="+", default=[3, 5])
    parser.add_argument("--clips", type=int, default=3839, help="ClothoV2 development: 3839 (x5 captions)")
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--block", type=int, default=2048)
    parser.add_argument("--quick", action="store_true", help="300 clips, 2 teachers (figures not meaningful)")
    args = parser.parse_args(argv)
    if args.quick:
        args.clips, args.teachers = 300, [2]
    out_path = paths.results_dir("benchmarks") / "correspondences.json"
    runs = []
    for n_teachers in args.teachers:
        runs.append(measure(n_teachers, args.clips, args.dim, args.block))
        print(f"{n_teachers} teachers: {runs[-1]['seconds']} s, +{runs[-1]['peak_added_gb']} GB peak", flush=True)
    worst = max(r["peak_added_gb"] for r in runs)
    atomic_write_json(out_path, {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {platform.system()}",
        **precision.cpu_record(),
        "python": sys.version.split()[0], "quick": args.quick, "repeats": 1,
        "what": "stack_teachers + full_split_similarity on random fp16 unit embeddings",
        "memory": "peak RSS added over the RSS just before (psutil, 5 ms polling)",
        "runs": runs,
        "target": {"peak_added_gb": TARGET_GB, "clips": 3839, "met": None if args.quick else worst <= TARGET_GB},
    })
    print(f"written to {out_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
