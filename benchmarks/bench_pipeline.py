"""Pipeline benchmark: wall time and peak memory of one ``./run_all.sh`` (tiny profile), per notebook.

Runs ``./run_all.sh --force --quiet`` once, exactly as a user would, in a scratch SALSA_HOME (so your
data and results are untouched; notebook 00 generates the synthetic set there), with the environment
``run_all.sh`` already picks (no install is timed if it is current). ``--force`` retrains every model,
so nothing is reused from an earlier run. While it runs, its process tree is polled with psutil every
``--interval`` seconds. Papermill starts one Jupyter kernel per notebook, in order, so each poll is
attributed to the notebook whose kernel is alive: a notebook's peak is the summed RSS of the whole tree
(runner + its kernel) while it ran. Shared pages count once per process, a slight overstatement.

Per-notebook seconds come from ``<SALSA_HOME>/results/<profile>/run_log.csv`` (papermill execution);
``wall_s`` is the whole command (bootstrap check, runner, kernels). One run: no repeats (about 8
minutes on 2 cores). The issue's target is a wall time of at most 10 minutes on this 2-core machine.
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
from salsa_lib.profiles import MINIATURE_OVERRIDES as QUICK_OVERRIDES
from salsa_lib.files import atomic_write_json

# small values for every stage (the same sizes the notebook test uses)


TARGET_WALL_S = 600  # the target for the tiny profile on a 2-core machine


def notebook_names(profile: str, overrides: dict[str, str]) -> list[str]:
    from salsa_lib.runner import plan

    return [step.name for step in plan(profile, overrides)]


def _is_kernel(proc: psutil.Process) -> bool:
    try:
        return any("ipykernel" in part for part in proc.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def run_tracked(command: list[str], env: dict[str, str], interval: float, log) -> dict:
    """Run ``command``; return its exit code, wall time and peak RSS of its process tree per kernel.

    ``kernels`` lists, in start order, each kernel's peak tree RSS and the largest single process then.
    """
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=paths.REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    root = psutil.Process(process.pid)
    kernel_order: list[int] = []  # kernel pids in the order they appeared
    peaks: dict[int | None, dict] = {}  # kernel pid (None: no kernel alive) -> peaks
    known: dict[int, bool] = {}
    while process.poll() is None:
        try:
            tree = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            break
        rss, kernel = [], None
        for proc in tree:
            try:
                rss.append(proc.memory_info().rss)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            if proc.pid not in known:
                known[proc.pid] = _is_kernel(proc)
                if known[proc.pid]:
                    kernel_order.append(proc.pid)
            if known[proc.pid]:
                kernel = proc.pid
        if rss:
            peak = peaks.setdefault(kernel, {"tree": 0, "single": 0})
            peak["tree"], peak["single"] = max(peak["tree"], sum(rss)), max(peak["single"], max(rss))
        time.sleep(interval)
    returncode = process.wait()
    mb = lambda b: round(b / 2**20, 1)  # noqa: E731
    return {"returncode": returncode, "wall_s": round(time.perf_counter() - start, 2),
            "peak_rss_mb": mb(max((p["tree"] for p in peaks.values()), default=0)),
            "kernels": [{"peak_rss_mb": mb(peaks.get(pid, {}).get("tree", 0)),
                         "peak_process_rss_mb": mb(peaks.get(pid, {}).get("single", 0))} for pid in kernel_order]}


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
    names = notebook_names(args.profile, overrides)

    home = args.keep or Path(tempfile.mkdtemp(prefix="salsa_bench_pipeline_"))
    home.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "SALSA_HOME": str(home), "PYTHONUNBUFFERED": "1"}
    log_path = home / "bench_pipeline.log"
    command = ["bash", str(paths.REPO_ROOT / "run_all.sh"), "--profile", args.profile, "--force", "--quiet"]
    command += [x for k, v in overrides.items() for x in ("-p", k, v)]
    try:
        print(f"{' '.join(command[1:])} (SALSA_HOME={home}) ...", flush=True)
        with open(log_path, "w") as log:
            tracked = run_tracked(command, env, args.interval, log)
        run_log = home / "results" / args.profile / "run_log.csv"
        seconds = {}
        if run_log.exists():
            log_frame = pd.read_csv(run_log)
            seconds = dict(zip(log_frame.notebook, log_frame.seconds))  # the last row per notebook wins
        rows = []
        for number, name in enumerate(names):
            kernel = tracked["kernels"][number] if number < len(tracked["kernels"]) else {}
            rows.append({"notebook": name, "seconds": float(seconds[name]) if name in seconds else None, **kernel})
        failed = tracked["returncode"] != 0 or any(r["seconds"] is None for r in rows)
        if failed:
            print("\n".join(log_path.read_text().splitlines()[-30:]), file=sys.stderr)
        if len(tracked["kernels"]) != len(names):
            print(f"warning: saw {len(tracked['kernels'])} kernels for {len(names)} notebooks; "
                  "per-notebook memory may be misattributed", file=sys.stderr)
        result = {
            "date": time.strftime("%Y-%m-%d %H:%M"),
            "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                       f"{round(psutil.virtual_memory().total / 2**30, 1)} GiB, {platform.system()}",
            "python": sys.version.split()[0], "profile": args.profile, "quick": args.quick,
            "overrides": overrides, "command": " ".join(["./run_all.sh", *command[2:]]),
            "memory": f"peak summed RSS of run_all.sh's process tree while each notebook's kernel ran, "
                      f"polled every {args.interval} s",
            "repeats": 1, "returncode": tracked["returncode"], "status": "failed" if failed else "ok",
            "notebooks": rows,
            "notebook_seconds_total": round(sum(r["seconds"] or 0 for r in rows), 1),
            "wall_s": tracked["wall_s"], "peak_rss_mb": tracked["peak_rss_mb"],
            "target": {"wall_s": TARGET_WALL_S, "met": None if args.quick or failed
                       else tracked["wall_s"] <= TARGET_WALL_S},
        }
    finally:
        if args.keep is None:
            shutil.rmtree(home, ignore_errors=True)
    if failed:  # keep the last good figures; the failed run's are kept beside them for a look
        out_path = out_path.with_name(out_path.name + ".failed")
    atomic_write_json(out_path, result)
    print(f"notebooks {result['notebook_seconds_total']} s, wall {result['wall_s']} s, "
          f"peak {result['peak_rss_mb']} MB; written to {out_path}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
