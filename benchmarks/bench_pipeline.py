"""Pipeline benchmark: wall time and peak memory of one ``./run_all.sh`` (tiny profile), per notebook.

Runs ``./run_all.sh --force --quiet`` once, exactly as a user would, in a scratch SALSA_HOME (so your
data and results are untouched; notebook 00 generates the synthetic set there), with the environment
``run_all.sh`` already picks (no install is timed if it is current). ``--force`` retrains every model,
so nothing is reused from an earlier run. While it runs, its process tree is polled with psutil every
``--interval`` seconds. Papermill starts one Jupyter kernel per notebook, in order, so each poll is
attributed to the notebook whose kernel is alive: a notebook's peak is the summed RSS of the whole tree
(runner + its kernel) while it ran. Shared pages count once per process, a slight overstatement.

Per-notebook seconds come from ``<SALSA_HOME>/results/<profile>/run_log.csv`` (papermill execution);
``wall_s`` is the whole command (bootstrap check, runner, kernels). ``precision`` is what the trained
runs recorded in their ``run.json`` (``auto`` resolves by the CPU: see salsa_lib/stages/precision.py).

Machines differ, so a time is only comparable with one measured beside it: ``--baseline REV`` first
runs the same command on another commit (a temporary git worktree, imported through PYTHONPATH with
this environment's packages), then this checkout's, back to back, and records both and their ratio.
One run each: no repeats. Writes results/benchmarks/pipeline.json.

    .venv/bin/python benchmarks/bench_pipeline.py [--quick] [--profile tiny] [--keep DIR]
    .venv/bin/python benchmarks/bench_pipeline.py -p precision 32-true --baseline 9f96f4e

``--quick`` passes small ``-p`` overrides (a 16-clip data set, one epoch of 1 s clips, 2 tiny members):
about a minute, for smoke tests; its figures say nothing about the real pipeline.
"""

from __future__ import annotations

import argparse
import json
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
from salsa_lib.profiles import MINIATURE_OVERRIDES as QUICK_OVERRIDES
from salsa_lib.stages import precision, verdict

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


def run_tracked(command: list[str], env: dict[str, str], interval: float, log, cwd: Path = paths.REPO_ROOT) -> dict:
    """Run ``command``; return its exit code, wall time and peak RSS of its process tree per kernel.

    ``kernels`` lists, in start order, each kernel's peak tree RSS and the largest single process then.
    """
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
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


def recorded_precisions(results: Path) -> list[str]:
    """The precision every trained run of a results folder recorded (absent in records of older code)."""
    found = [json.loads(p.read_text()).get("precision", "not recorded")
             for p in sorted([*results.glob("stage1/member*/run.json"), *results.glob("stage2/*/run.json")])]
    return sorted(set(found))


def run_outcome(results: Path) -> dict:
    """What the timed run found, so the figures quoted from it travel with its timings: the verdict
    table, the per-seed rows behind it (so a student can be named and the table recomputed), its words,
    and how much each member's validation curve still rose over its last quarter."""
    tables = results / "tables"
    records = lambda frame: frame.astype(object).where(frame.notna(), None).to_dict("records")  # noqa: E731
    outcome = {}
    if (tables / "verdict.csv").exists():
        outcome["verdict"] = records(pd.read_csv(tables / "verdict.csv"))
        outcome["verdict_seeds"] = records(verdict.per_seed_from_files(results))
    if (tables / "verdict_words.md").exists():
        outcome["verdict_words"] = (tables / "verdict_words.md").read_text()
    if (tables / "01_convergence.csv").exists():
        outcome["convergence"] = records(pd.read_csv(tables / "01_convergence.csv"))
    return outcome


def run_pipeline(checkout: Path, profile: str, overrides: dict[str, str], interval: float, home: Path,
                 names: list[str], env: dict[str, str]) -> dict:
    """One ``run_all.sh --force --quiet`` of ``checkout`` in the scratch ``home``: wall, per-notebook rows."""
    home.mkdir(parents=True, exist_ok=True)
    env = {**env, "SALSA_HOME": str(home), "PYTHONUNBUFFERED": "1"}
    log_path = home / "bench_pipeline.log"
    command = ["bash", str(checkout / "run_all.sh"), "--profile", profile, "--force", "--quiet"]
    command += [x for k, v in overrides.items() for x in ("-p", k, v)]
    print(f"{' '.join(command[1:])} (SALSA_HOME={home}) ...", flush=True)
    with open(log_path, "w") as log:
        tracked = run_tracked(command, env, interval, log, cwd=checkout)
    run_log = home / "results" / profile / "run_log.csv"
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
    return {"command": " ".join(["./run_all.sh", *command[2:]]), "returncode": tracked["returncode"],
            **run_outcome(home / "results" / profile),
            "failed": failed, "notebooks": rows, "precision": recorded_precisions(home / "results" / profile),
            "notebook_seconds_total": round(sum(r["seconds"] or 0 for r in rows), 1),
            "wall_s": tracked["wall_s"], "peak_rss_mb": tracked["peak_rss_mb"]}


def baseline_checkout(rev: str, folder: Path) -> str:
    """A detached worktree of ``rev`` in ``folder``; returns the full commit hash."""
    subprocess.run(["git", "worktree", "add", "--detach", str(folder), rev], cwd=paths.REPO_ROOT, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=folder, check=True, capture_output=True, text=True).stdout.strip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="tiny")
    parser.add_argument("--quick", action="store_true", help="small -p overrides: about a minute")
    parser.add_argument("-p", nargs=2, action="append", default=[], metavar=("KEY", "VALUE"),
                        help="a notebook parameter for both runs, e.g. -p precision 32-true")
    parser.add_argument("--baseline", metavar="REV", help="first time the same command on this commit")
    parser.add_argument("--interval", type=float, default=0.2, help="memory polling interval, seconds")
    parser.add_argument("--keep", type=Path, help="use this folder as the scratch SALSA_HOME and keep it")
    parser.add_argument("--output", type=Path, help="JSON path (default results/benchmarks/pipeline.json)")
    args = parser.parse_args(argv)
    out_path = args.output or paths.results_dir("benchmarks") / "pipeline.json"  # before SALSA_HOME moves
    overrides = {k: str(v) for k, v in QUICK_OVERRIDES.items()} if args.quick else {}
    overrides.update(dict(args.p))
    names = notebook_names(args.profile, overrides)

    home = args.keep or Path(tempfile.mkdtemp(prefix="salsa_bench_pipeline_"))
    env = dict(os.environ)
    baseline = None
    try:
        if args.baseline:
            checkout = home / "baseline_checkout"
            commit = baseline_checkout(args.baseline, checkout)
            venv = Path(sys.prefix)  # this environment, activated, with the old package first on the path
            old_env = {**env, "VIRTUAL_ENV": str(venv), "PATH": f"{venv / 'bin'}:{env.get('PATH', '')}",
                       "PYTHONPATH": str(checkout)}
            try:
                baseline = {"commit": commit, **run_pipeline(checkout, args.profile, overrides, args.interval,
                                                             home / "baseline", names, old_env)}
            finally:
                subprocess.run(["git", "worktree", "remove", "--force", str(checkout)], cwd=paths.REPO_ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=paths.REPO_ROOT, capture_output=True,
                                text=True).stdout.strip()
        ours = run_pipeline(paths.REPO_ROOT, args.profile, overrides, args.interval, home / "current", names, env)
    finally:
        if args.keep is None:
            shutil.rmtree(home, ignore_errors=True)
    failed = ours.pop("failed") or bool(baseline and baseline.pop("failed"))
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                   f"{round(psutil.virtual_memory().total / 2**30, 1)} GiB, {platform.system()}",
        **precision.cpu_record(),
        "python": sys.version.split()[0], "profile": args.profile, "quick": args.quick,
        "overrides": overrides, "commit": commit,
        "memory": f"peak summed RSS of run_all.sh's process tree while each notebook's kernel ran, "
                  f"polled every {args.interval} s",
        "repeats": 1, "status": "failed" if failed else "ok", **ours,
        "target": {"wall_s": TARGET_WALL_S, "met": None if args.quick or failed else ours["wall_s"] <= TARGET_WALL_S},
    }
    if baseline:
        result["baseline"] = baseline
        result["ratio_to_baseline"] = {
            "wall": round(ours["wall_s"] / baseline["wall_s"], 3),
            "notebooks": round(ours["notebook_seconds_total"] / baseline["notebook_seconds_total"], 3)
            if baseline["notebook_seconds_total"] else None}
    if failed:  # keep the last good figures; the failed run's are kept beside them for a look
        out_path = out_path.with_name(out_path.name + ".failed")
    atomic_write_json(out_path, result)
    print(f"notebooks {result['notebook_seconds_total']} s, wall {result['wall_s']} s, "
          f"peak {result['peak_rss_mb']} MB, precision {result['precision']}; written to {out_path}")
    if baseline:
        print(f"baseline {baseline['commit'][:7]}: wall {baseline['wall_s']} s; ratio {result['ratio_to_baseline']}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
