"""Data benchmark: reading clips from the 32 kHz cache vs decoding the source files with librosa.

Also times generating the default synthetic set and building its cache, in a scratch SALSA_HOME so
nothing of yours is touched. Writes results/benchmarks/data.json (figures are medians of repeats).

    .venv/bin/python benchmarks/bench_data.py [--clips 100] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import librosa
import numpy as np

from salsa_lib import paths
from salsa_lib.config import DataConfig
from salsa_lib.data.audio import crop_or_pad
from salsa_lib.files import atomic_write_json
from salsa_lib.stages import precision


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=100, help="clips read per repeat")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    out_path = paths.results_dir("benchmarks") / "data.json"  # resolved before SALSA_HOME moves

    with tempfile.TemporaryDirectory() as scratch:
        os.environ["SALSA_HOME"] = scratch
        from salsa_lib.data import data_sources

        config = DataConfig()
        generate_s = _timed(lambda: data_sources.fetch(config, progress=False))
        cache_s = _timed(lambda: data_sources.load_splits(config, splits=("train",), progress=False))
        train = data_sources.load_splits(config, splits=("train",), progress=False)["train"]
        n = min(args.clips, train.n_clips)
        sources = [Path(train.root) / train.split / name for name in train.file_names[:n]]
        length = int(config.clip_seconds * config.sample_rate)
        rng = np.random.default_rng(0)

        def from_cache():
            for i in range(n):
                crop_or_pad(train.audio[i], length, rng)

        def from_source():
            for path in sources:
                crop_or_pad(librosa.load(path, sr=config.sample_rate, mono=True)[0], length, rng)

        cache_times = [_timed(from_cache) for _ in range(args.repeats)]
        source_times = [_timed(from_source) for _ in range(args.repeats)]

    cache_rate = n / statistics.median(cache_times)
    source_rate = n / statistics.median(source_times)
    result = {
        "date": time.strftime("%Y-%m-%d"), "machine": f"{platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores", **precision.cpu_record(),
        "clips": n, "repeats": args.repeats,
        "synthetic_default_generate_s": round(generate_s, 2),
        "synthetic_train_cache_build_s": round(cache_s, 2),
        "cache_read_crop_clips_per_s": round(cache_rate, 1),
        "librosa_load_crop_clips_per_s": round(source_rate, 1),
    }
    atomic_write_json(out_path, result)
    for key, value in result.items():
        print(f"{key:34s} {value}")
    print(f"written to {out_path}")


if __name__ == "__main__":
    main()
