"""Text step cache benchmark: does leaving out the frozen text layers' dropout change what stage 1 learns?

The step cache computes the frozen bottom layers of the text encoder once per run, so in training
they run without the dropout (``text_dropout``) the uncached path applies in every layer. This trains
the tiny profile's stage-1 members twice, with the cache (``text_step_cache = True``, the default) and
without it, at one precision, from the same data and pretrained audio encoder, and scores every
member's best-validation weights on the test split: mAP@10 mean ± std (ddof 1) over the seeds, the
paired difference per seed, and the seconds each variant took. Writes results/benchmarks/text_cache.json.

    .venv/bin/python benchmarks/bench_text_cache.py [--precision 32-true] [--reuse-home DIR]

``--reuse-home``: a SALSA_HOME of an earlier tiny run whose data and pretraining (same parameters)
are copied into the scratch folder instead of being made again (about 4 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from salsa_lib import paths
from salsa_lib.files import atomic_write_json
from salsa_lib.stages import precision


def score_members(config, data) -> list[dict]:
    """Test-split metrics of every member's best-validation weights."""
    from salsa_lib import runs
    from salsa_lib.core.checkpoints import load_member
    from salsa_lib.data import data_sources
    from salsa_lib.stages import evaluation

    split = data_sources.load_splits(data, ("test",), progress=False)["test"]
    truth = data_sources.load_truth(data, "test")
    rows = []
    for folder in runs.member_folders(config.profile):
        model, member_config = load_member(runs.checkpoint(folder))
        result = evaluation.evaluate(model, split, member_config.eval_seconds, 32, "cpu", truth)
        rows.append({"member": folder.name, "seed": member_config.seed,
                     **{k: round(float(v), 6) for k, v in result.metrics.items()}})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--precision", default="auto", help="training precision of both variants")
    parser.add_argument("--reuse-home", type=Path, help="copy data and pretraining from this SALSA_HOME")
    parser.add_argument("--output", type=Path, help="JSON path (default results/benchmarks/text_cache.json)")
    args = parser.parse_args(argv)
    out_path = args.output or paths.results_dir("benchmarks") / "text_cache.json"  # before SALSA_HOME moves

    with tempfile.TemporaryDirectory(prefix="salsa_bench_text_cache_") as scratch:
        if args.reuse_home:
            shutil.copytree(args.reuse_home / "data", Path(scratch) / "data")
            shutil.copytree(args.reuse_home / "results" / "tiny" / "pretraining",
                            Path(scratch) / "results" / "tiny" / "pretraining")
        os.environ["SALSA_HOME"] = scratch  # read by worker processes too
        from salsa_lib.data import data_sources
        from salsa_lib.profiles import get_profile
        from salsa_lib.stages import pretraining, stage1

        profile = get_profile("tiny")
        data = profile.data
        data_sources.fetch(data, progress=False)
        data_sources.load_splits(data, progress=False)
        data_sources.save_data_config(data)
        # three PaSST members, as measured (the tiny profile itself trains one, and other families
        # whose text side is the same): a paired difference needs seeds to spread over
        base = profile.stage1.replace(precision=args.precision, members=3, other_members="")
        pretrained = pretraining.pretrain_or_reuse(base, data, progress=False)
        variants = {}
        for cached in (True, False):
            config = base.replace(text_step_cache=cached)
            start = time.perf_counter()
            stage1.train_members(config, data, progress=False, force=True,
                                 pretrained={config.audio_encoder: pretrained})
            seconds = round(time.perf_counter() - start, 1)
            variants["cached" if cached else "uncached"] = {"text_step_cache": cached, "seconds": seconds,
                                                            "members": score_members(config, data)}
            print(f"text_step_cache={cached}: {seconds} s, test mAP@10 "
                  f"{[m['mAP@10'] for m in variants['cached' if cached else 'uncached']['members']]}", flush=True)

    summary = {}
    for name, variant in variants.items():
        values = np.array([m["mAP@10"] for m in variant["members"]])
        summary[name] = {"mAP@10 mean": round(float(values.mean()), 6),
                         "mAP@10 std (ddof 1)": round(float(values.std(ddof=1)), 6) if len(values) > 1 else None}
    paired = np.array([u["mAP@10"] - c["mAP@10"] for u, c in zip(variants["uncached"]["members"],
                                                                  variants["cached"]["members"])])
    summary["uncached minus cached"] = {
        "mAP@10 mean": round(float(paired.mean()), 6),
        "mAP@10 std (ddof 1)": round(float(paired.std(ddof=1)), 6) if len(paired) > 1 else None,
        "seeds where uncached is better": f"{int((paired > 0).sum())}/{len(paired)}"}
    result = {"date": time.strftime("%Y-%m-%d %H:%M"),
              "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {platform.system()}",
              **precision.cpu_record(),
              "python": sys.version.split()[0], "precision": precision.resolve(args.precision, "cpu"),
              "what": "tiny-profile stage-1 members trained with and without the text step cache; test split, "
                      "best-validation weights", "variants": variants, "summary": summary}
    atomic_write_json(out_path, result)
    print(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
