"""Pipeline benchmark: wall time and peak memory of ``./run_all.sh`` (tiny profile), notebook by notebook.

Runs ``./run_all.sh --only NN --force --quiet`` for every notebook of the profile in order, in a scratch
SALSA_HOME (so your data and results are untouched; the synthetic data set is generated there by notebook
00), with the environment ``run_all.sh`` already picks (no install is timed if it is current). While each
runs, the process tree (the runner and the Jupyter kernel it starts) is polled with psutil every
``--interval`` seconds; the peak of the summed RSS is recorded (shared pages count once per process, so
this slightly overstates the true footprint; the largest single process is recorded too).

Per-notebook seconds are read from ``<SALSA_HOME>/results/<profile>/run_log.csv`` (papermill execution
only); ``wall_s`` is the whole invocation (bootstrap check, runner start, kernel start, execution).
One run per notebook: no repeats (the full profile takes about 8 minutes on 2 cores).
Writes results/benchmarks/pipeline.json.

    .venv/bin/python benchmarks/bench_pipeline.py [--quick] [--profile tiny] [--keep DIR]

``--quick`` passes small ``-p`` overrides (a 16-clip data set, one epoch of 1 s clips, 2 tiny members):
about a minute, for smoke tests; its figures say nothing about the real pipeline.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import psutil

from salsa_lib import paths
from salsa_lib.files import atomic_write_json

# small values for every stage (the same sizes the notebook test uses)
QUICK_OVERRIDES = {
    "n_train_clips": 8, "n_val_clips": 4, "n_test_clips": 4, "clip_seconds": 1.0, "source_sample_rate": 16000,
    "members": 2, "passt_width": 64, "passt_depth": 1, "passt_heads": 2, "text_trainable_layers": 1,
    "embed_dim": 32, "train_seconds": 1.0, "eval_seconds": 1.0, "window_seconds": 1.0, "batch_size": 10,
    "eval_batch_size": 4, "epochs": 1, "warmup_epochs": 0.5, "rampdown_start": 0.5, "rampdown_stop": 1.0,
}


def notebook_numbers(profile: str, overrides: dict[str, str]) -> list[tuple[str, str]]:
    from salsa_lib.runner import plan

    return [(step.name[:2], step.name) for step in plan(profile, overrides)]


def run_tracked(command: list[str], env: dict[str, str], interval: float, log) -> dict:
    """Run ``command``; return its exit code, wall time and the peak RSS of its process tree."""
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=paths.REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    root = psutil.Process(process.pid)
    peak_tree = peak_single = 0
    peak_processes = 0
    while process.poll() is None:
        try:
            tree = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            break
        rss = []
        for proc in tree:
            try:
                rss.append(proc.memory_info().rss)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
        if rss:
            peak_tree, peak_single = max(peak_tree, sum(rss)), max(peak_single, max(rss))
            peak_processes = max(peak_processes, len(rss))
        time.sleep(interval)
    returncode = process.wait()
    return {"returncode": returncode, "wall_s": round(time.perf_counter() - start, 2),
            "peak_rss_mb": round(peak_tree / 2**20, 1), "peak_process_rss_mb": round(peak_single / 2**20, 1),
            "processes": peak_processes}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="tiny")
    parser.add_argument("--quick", action="store_true", help="small -p overrides: about a minute")
    parser.add_argument("--interval", type=float, default=0.2, help="memory polling interval, seconds")
    parser.add_argument("--keep", type=Path, help="use this folder as the scratch SALSA_HOME and keep it")
    parser.add_argument("--output", type=Path, help="JSON path (default results/benchmarks/pipeline.json)")
    args = parser.parse_args(argv)
    out_path = args.output or paths.results_dir("benchmarks") / "pipeline.json"  # before SALSA_HOME moves
    overrides = {k: str(v) for k, v in QUICK_OVERRIDES.items()} if args.quick else {}
    notebooks = notebook_numbers(args.profile, overrides)

    home = args.keep or Path(tempfile.mkdtemp(prefix="salsa_bench_pipeline_"))
    home.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "SALSA_HOME": str(home), "PYTHONUNBUFFERED": "1"}
    env.pop("SALSA_FORCE", None)
    log_path = home / "bench_pipeline.log"
    rows, failed = [], None
    try:
        with open(log_path, "w") as log:
            for number, name in notebooks:
                command = ["bash", str(paths.REPO_ROOT / "run_all.sh"), "--profile", args.profile, "--only", number,
                           "--force", "--quiet"] + [x for k, v in overrides.items() for x in ("-p", k, v)]
                print(f"[{name}] ...", end=" ", flush=True)
                log.write(f"\n### {' '.join(command)}\n")
                log.flush()
                row = {"notebook": name, **run_tracked(command, env, args.interval, log)}
                print(f"{row['wall_s']} s, peak {row['peak_rss_mb']} MB", flush=True)
                rows.append(row)
                if row["returncode"] != 0:
                    failed = name
                    break
        run_log = home / "results" / args.profile / "run_log.csv"
        seconds = {}
        if run_log.exists():
            log_frame = pd.read_csv(run_log)
            seconds = dict(zip(log_frame.notebook, log_frame.seconds))  # the last row per notebook wins
        for row in rows:
            row["seconds"] = float(seconds[row["notebook"]]) if row["notebook"] in seconds else None
        if failed:
            tail = log_path.read_text().splitlines()[-30:]
            print("\n".join(tail), file=sys.stderr)
        notebook_seconds = [r["seconds"] for r in rows if r["seconds"] is not None]
        result = {
            "date": time.strftime("%Y-%m-%d %H:%M"),
            "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                       f"{round(psutil.virtual_memory().total / 2**30, 1)} GiB, {platform.system()}",
            "python": sys.version.split()[0], "profile": args.profile, "quick": args.quick,
            "overrides": overrides, "command": "./run_all.sh --only NN --force --quiet, one notebook at a time",
            "memory": f"peak summed RSS of run_all.sh's process tree, polled every {args.interval} s",
            "repeats": 1, "status": "failed in " + failed if failed else "ok",
            "notebooks": rows,
            "notebook_seconds_total": round(sum(notebook_seconds), 1),
            "wall_s_total": round(sum(r["wall_s"] for r in rows), 1),
            "peak_rss_mb": max((r["peak_rss_mb"] for r in rows), default=None),
        }
    finally:
        if args.keep is None:
            shutil.rmtree(home, ignore_errors=True)
    atomic_write_json(out_path, result)
    print(f"notebooks {result['notebook_seconds_total']} s, wall {result['wall_s_total']} s, "
          f"peak {result['peak_rss_mb']} MB; written to {out_path}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
