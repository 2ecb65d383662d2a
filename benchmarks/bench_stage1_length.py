"""Stage 1's length, measured: the members trained for twice the epochs against the members, on test.

Notebook 01 trains the tiny profile's members for ``epochs`` with a warm-up, a cosine ramp-down and a
tail at the minimum learning rate. Whether that was long enough is not read from the tail of the
validation curve (the learning rate is ~0 there, so the curve cannot move, whatever the members'
state) but measured: each member is trained again with the whole schedule stretched by ``--factor``
(epochs, warm-up, ramp-down start and stop all multiplied, so the shape is the same), from the same
seed (member k: seed + k), data and pretrained PaSST weights (one pretraining, copied, checked by
hash). Only the members of the students' architecture (the small PaSST) take part: stage 2's students
and its control start from them; the other families of the mixed ensemble (``other_members``) do not.
Both lengths are scored on the test split (mAP@10, R@1/5/10, and multi mAP@10 with the
synthetic set's truth) with their best-validation weights (what stage 2 starts from) and their
last-epoch weights, and paired by seed: per metric the difference (longer - normal), its mean ±
sample std, a 95 % paired t interval (``verdict.t_interval``) and the seeds that gain. A difference
is a finding only when its interval excludes zero.

Both lengths train in fp32 (``32-true``), the precision a CPU without native bf16 trains in, so the
result is the same kind of run on every machine. Runs live in ``results/tiny-stage1-length/epochs<E>/``
under SALSA_HOME (never the tiny profile's own folders) and are reused when this is run again
(``train_or_reuse``); the test scores are recomputed (seconds). Writes
results/benchmarks/stage1_length.json.

    nice .venv/bin/python benchmarks/bench_stage1_length.py            # ~30-40 min on 2 cores
    .venv/bin/python benchmarks/bench_stage1_length.py --quick         # a miniature: ~2 min

``--quick``: 8/4/4 clips of 1 s, a tiny PaSST, 3 members, 1 against 2 epochs; its figures mean nothing.
Without ``--home`` it runs in a scratch home that is removed afterwards, and writes its JSON to the
system's temporary folder (``--output`` to choose), never over the committed file.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = "tiny-stage1-length"  # results/<ROOT>/epochs<E>/: this benchmark's own profile folders
PRECISION = "32-true"  # what a CPU without native bf16 trains in (precision.CPU_FP32_PRECISION)
SCHEDULE = ("epochs", "warmup_epochs", "rampdown_start", "rampdown_stop")
METRICS = ("mAP@10", "R@1", "R@5", "R@10", "multi mAP@10")
WEIGHTS = ("best", "last")
# seeds of the students' architecture compared, in the full run and in --quick: 3, so the paired
# interval has two degrees of freedom (the committed measurement used 3)
MEASURED_MEMBERS = 3
# the miniature of --quick: the sizes of the notebook tests (tests/conftest.py)
QUICK_DATA = dict(n_train_clips=8, n_val_clips=4, n_test_clips=4, clip_seconds=1.0, source_sample_rate=16000)
QUICK_STAGE1 = dict(passt_width=64, passt_depth=1, passt_heads=2, text_trainable_layers=1, embed_dim=32,
                    train_seconds=1.0, eval_seconds=1.0, window_seconds=1.0, batch_size=10, eval_batch_size=4,
                    epochs=1, warmup_epochs=0.5, rampdown_start=0.5, rampdown_stop=1.0,
                    pretrain_clips=12, pretrain_epochs=1, parallel_runs=1)


def stretched(config, factor: int):
    """``config`` with its schedule (epochs, warm-up, ramp-down start and stop) ``factor`` times as long,
    in its own results folder."""
    changes = {name: type(getattr(config, name))(getattr(config, name) * factor) for name in SCHEDULE}
    return config.replace(**changes, profile=f"{ROOT}/epochs{changes['epochs']}")


def configs(quick: bool, factor: int):
    """The data config and the two stage-1 configs (normal, stretched) of the measurement."""
    from salsa_lib.profiles import get_profile

    tiny = get_profile("tiny")
    data = tiny.data.replace(**QUICK_DATA) if quick else tiny.data
    # the members of the students' architecture only: stage 2's students and its control start from them;
    # MEASURED_MEMBERS seeds (the tiny profile itself trains one PaSST member: no spread to measure)
    stage1 = tiny.stage1.replace(members=MEASURED_MEMBERS, **(QUICK_STAGE1 if quick else {}), precision=PRECISION,
                                 other_members="")
    normal = stage1.replace(profile=f"{ROOT}/epochs{stage1.epochs}")
    return data, normal, stretched(normal, factor)


def share_pretraining(record: dict, source: str, target: str) -> None:
    """The stretched members start from the very weights the normal ones do: the pretraining folder,
    copied (``load_pretrained`` checks the hash before every member loads it)."""
    from salsa_lib.files import file_digest
    from salsa_lib.stages import pretraining

    copy = pretraining.checkpoint_path(target)
    if copy.exists() and file_digest(copy) == record["checkpoint_sha256"]:
        return
    shutil.copytree(pretraining.folder(source), pretraining.folder(target), dirs_exist_ok=True)


def score_members(config, test, truth, batch_size: int) -> list[dict]:
    """One row per member and weights: seed, best epoch, training seconds and the test metrics (percent)."""
    from salsa_lib import runs
    from salsa_lib.core.checkpoints import load_member
    from salsa_lib.stages.evaluation import evaluate

    rows = []
    for folder in runs.member_folders(config.profile):
        record = json.loads((folder / runs.RECORD).read_text())
        for weights in WEIGHTS:
            model, member_config = load_member(runs.checkpoint(folder, weights))
            scores = evaluate(model, test, member_config.eval_seconds, batch_size, "cpu", truth,
                              name=f"{config.profile}/{folder.name} ({weights})").metrics
            rows.append({"member": int(folder.name.removeprefix("member")), "seed": record["run"]["seed"],
                         "epochs": config.epochs, "weights": weights, "best_epoch": record["best_epoch"],
                         "train_seconds": record["seconds"], "precision": record.get("precision"),
                         **{m: 100 * scores[m] for m in METRICS if m in scores}})
    return rows


def paired_differences(rows: list[dict], normal_epochs: int, longer_epochs: int) -> list[dict]:
    """Per weights and metric: longer - normal, seed by seed; mean, sample std, 95 % paired t interval,
    seeds that gain, and whether the interval calls it a gain, a loss or nothing."""
    from salsa_lib.stages.verdict import CONFIDENCE, t_interval

    out = []
    for weights in WEIGHTS:
        for metric in METRICS:
            by = {e: {r["seed"]: r[metric] for r in rows if r["epochs"] == e and r["weights"] == weights
                      and metric in r} for e in (normal_epochs, longer_epochs)}
            seeds = sorted(set(by[normal_epochs]) & set(by[longer_epochs]))
            if not seeds:
                continue
            diff = np.array([by[longer_epochs][s] - by[normal_epochs][s] for s in seeds])
            std = float(diff.std(ddof=1)) if len(diff) > 1 else float("nan")
            low, high = t_interval(float(diff.mean()), std, len(diff))
            out.append({"weights": weights, "metric": metric, "seeds": seeds, "per_seed": diff.tolist(),
                        "n": len(diff), "mean": float(diff.mean()), "std": std,
                        "ci_low": float(low), "ci_high": float(high), "confidence": CONFIDENCE,
                        "interval": "paired t", "gains": f"{int((diff > 0).sum())}/{len(diff)}",
                        "call": "gain" if low > 0 else "loss" if high < 0 else "no finding"})
    return out


def in_words(difference: dict, normal_epochs: int, longer_epochs: int) -> str:
    """One sentence for one paired difference, in percentage points."""
    d = difference
    return (f"{d['metric']} ({d['weights']} weights), {longer_epochs} - {normal_epochs} epochs: "
            f"{d['mean']:+.2f} ± {d['std']:.2f} points, 95 % paired t interval [{d['ci_low']:+.2f}, "
            f"{d['ci_high']:+.2f}], {d['gains']} seeds gain: "
            + {"gain": "the longer schedule scores higher (the interval excludes zero)",
               "loss": "the longer schedule scores lower (the interval excludes zero)",
               "no finding": "no difference the seeds can tell from zero"}[d["call"]] + ".")


def train(config, data, pretrained, label: str) -> float:
    """Train (or reuse) the members of one length; returns the seconds this call took."""
    from salsa_lib.stages import stage1

    started = time.perf_counter()
    print(f"\n== {label}: {config.members} members, schedule "
          + ", ".join(f"{name} {getattr(config, name):g}" for name in SCHEDULE)
          + f", results/{config.profile}", flush=True)
    table = stage1.train_members(config, data, progress=True,
                                 pretrained={config.audio_encoder: pretrained} if pretrained else None)
    print(table.to_string(index=False), flush=True)
    return round(time.perf_counter() - started, 1)


def measure(quick: bool, factor: int) -> dict:
    from salsa_lib.data import data_sources
    from salsa_lib.stages import pretraining

    data, normal, longer = configs(quick, factor)
    data_sources.fetch(data, progress=True)
    pretrained = pretraining.pretrain_or_reuse(normal, data, progress=True) if normal.pretrain_clips else None
    if pretrained is not None:
        share_pretraining(pretrained, normal.profile, longer.profile)
    seconds = {"normal": train(normal, data, pretrained, f"normal length ({normal.epochs} epochs)"),
               "longer": train(longer, data, pretrained, f"{factor}x the length ({longer.epochs} epochs)")}
    print("\n== scoring every member on the test split (best and last weights)", flush=True)
    test = data_sources.load_splits(data, splits=("test",), progress=False)["test"]
    truth = data_sources.load_truth(data, "test")
    batch = 32 if not quick else 4
    rows = score_members(normal, test, truth, batch) + score_members(longer, test, truth, batch)
    differences = paired_differences(rows, normal.epochs, longer.epochs)
    return {"data": data, "normal": normal, "longer": longer, "pretrained": pretrained, "rows": rows,
            "differences": differences, "test_clips": test.n_clips, "call_seconds": seconds}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a miniature (1 vs 2 epochs) in a scratch home")
    parser.add_argument("--factor", type=int, default=2, help="how many times as long the longer schedule is")
    parser.add_argument("--home", type=Path, help="SALSA_HOME for data and runs (default: the project's; "
                                                  "--quick: a new scratch folder, removed afterwards)")
    parser.add_argument("--output", type=Path, help="default: results/benchmarks/stage1_length.json in the home")
    args = parser.parse_args(argv)
    if args.factor < 2:
        parser.error("--factor must be at least 2")
    scratch = Path(tempfile.mkdtemp(prefix="salsa_stage1_length_")) if args.quick and args.home is None else None
    if args.home or scratch:
        os.environ["SALSA_HOME"] = str((args.home or scratch).resolve())  # before any path is resolved
    from salsa_lib import paths, provenance
    from salsa_lib.files import atomic_write_json
    from salsa_lib.stages import precision

    # a scratch home is removed at the end, so its figures go beside it, never over the committed file
    out_path = args.output or (Path(tempfile.gettempdir()) / "stage1_length_quick.json" if scratch
                               else paths.results_dir("benchmarks") / "stage1_length.json")
    started = time.perf_counter()
    try:
        result = measure(args.quick, args.factor)
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    normal, longer = result["normal"], result["longer"]
    command = "nice .venv/bin/python benchmarks/bench_stage1_length.py" + (" --quick" if args.quick else "") \
        + (f" --factor {args.factor}" if args.factor != 2 else "")
    words = [in_words(d, normal.epochs, longer.epochs) for d in result["differences"]]
    report = {
        "what": f"tiny profile's stage-1 members trained {args.factor}x as long (same schedule shape, seeds, "
                "data and pretrained start) against the members, scored on the test split, paired by seed",
        "command": command, "commit": provenance.run_metadata()["git_commit"],
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {platform.system()}",
        **precision.cpu_record(), "python": sys.version.split()[0], "quick": args.quick,
        "precision": PRECISION, "recorded_precisions": sorted({str(r["precision"]) for r in result["rows"]}),
        "profile": "tiny", "results": f"results/{ROOT}", "members": normal.members,
        "audio_encoder": normal.audio_encoder,
        "other_members": "left out: the students (and the control) start from the members of audio_encoder",
        "seeds": sorted({r["seed"] for r in result["rows"]}),
        "schedules": {"normal": {n: getattr(normal, n) for n in SCHEDULE},
                      "longer": {n: getattr(longer, n) for n in SCHEDULE}},
        "pretrained_audio_sha256": (result["pretrained"] or {}).get("checkpoint_sha256"),
        "split": "test", "test_clips": result["test_clips"], "unit": "percent (differences: percentage points)",
        "headline": "mAP@10 of the best-validation weights (what stage 2 starts from)",
        "rows": result["rows"], "differences": result["differences"], "in_words": words,
        "train_seconds": {length: round(sum(r["train_seconds"] for r in result["rows"]
                                            if r["epochs"] == cfg.epochs and r["weights"] == "best"), 1)
                          for length, cfg in (("normal", normal), ("longer", longer))},
        "this_call_seconds": result["call_seconds"], "wall_s": round(time.perf_counter() - started, 1),
    }
    atomic_write_json(out_path, report)
    print("\n" + "\n".join(words), flush=True)
    print(f"written to {out_path}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
