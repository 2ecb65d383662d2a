"""The study: ``./run_all.sh --profile tiny-study`` timed, and its verdict kept as small committed files.

The default run's 3 paired students per kind cannot tell a stage-2 effect from seed noise; the study
profile trains 8 PaSST members (plus one member of each other family for the mixed ensemble) and 8
paired students of each kind it names (profiles.py: ``tiny-study``). This script runs it in a
SALSA_HOME of its own (resumable: an interrupted study continues where it stopped; ``--force``
retrains), times it, then keeps what the README shows, in ``results/benchmarks/study/``:

- ``verdict_seeds.csv``: every student and member of the verdict, one row per model and weights
  (``verdict.per_seed``), the rows behind every mean, interval and point of the figure;
- ``study.json``: how it ran (command, commits, CPU kind, wall time, seconds per notebook, precision),
  the verdict table that ``verdict.paired_table`` computes from those rows, chance and the oracle
  ranking, each member's and each ensemble's estimate quality (AP and ROC-AUC against the true training
  correspondences, notebook 02) and each family's pretraining;
- ``verdict.png``: notebook 04's verdict figure (``verdict.plot_verdict``) drawn from the CSV; its PNG
  metadata carry the CSV's sha256, so a test can tell that the figure shows these rows.

``benchmarks/readme_verdict.py`` renders the README's verdict from these files. To record a study
that already ran (``--home`` holding ``results/tiny-study``), pass ``--record-only`` and the wall
time measured around it:

    .venv/bin/python benchmarks/bench_study.py -p precision 32-true --home DIR
    .venv/bin/python benchmarks/bench_study.py --record-only --home DIR --wall-s 5400 -p precision 32-true
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import psutil

from salsa_lib import paths, runs
from salsa_lib.files import atomic_path, atomic_write_csv, atomic_write_json
from salsa_lib.stages import precision, verdict

PROFILE = "tiny-study"
OUTPUT = paths.REPO_ROOT / "results" / "benchmarks" / "study"
SEEDS_FILE, RECORD_FILE, FIGURE_FILE = "verdict_seeds.csv", "study.json", "verdict.png"
SOURCE_KEY = "Source"  # the PNG text chunk naming the rows the figure was drawn from


def command_line(overrides: dict[str, str], force: bool) -> list[str]:
    """The study's command; not --quiet, so a run of over an hour shows each notebook's progress."""
    return ["./run_all.sh", "--profile", PROFILE, *(["--force"] if force else []),
            *[x for k, v in overrides.items() for x in ("-p", k, v)]]


def run_study(home: Path, overrides: dict[str, str], force: bool) -> float:
    """Run the study in ``home`` (its SALSA_HOME); returns the wall seconds; a failed run raises."""
    command = command_line(overrides, force)
    env = {**os.environ, "SALSA_HOME": str(home), "PYTHONUNBUFFERED": "1"}
    print(" ".join(command), f"(SALSA_HOME={home}) ...", flush=True)
    start = time.perf_counter()
    subprocess.run(["bash", str(paths.REPO_ROOT / command[0]), *command[1:]], cwd=paths.REPO_ROOT, env=env, check=True)
    return round(time.perf_counter() - start, 1)


def _runs_recorded(results: Path) -> list[dict]:
    return [json.loads(path.read_text()) for folder in ("stage1", "stage2") for path in
            sorted((results / folder).glob(f"*/{runs.RECORD}"))]


def pretraining_rows(results: Path) -> list[dict]:
    """Each family's held-out tag mAP before and after its pretraining, and its seconds."""
    rows = []
    for path in sorted((results / "pretraining").rglob(runs.RECORD)):
        record = json.loads(path.read_text())
        rows.append({"audio encoder": record["params"]["audio_encoder"], "tag mAP before": record["before"]["tag mAP"],
                     "tag mAP after": record["after"]["tag mAP"], "seconds": record["seconds"]})
    return rows


def record(home: Path, wall_s: float, overrides: dict[str, str], force: bool, out: Path = OUTPUT) -> dict:
    """Write the study's seeds, record and figure from ``home``'s results; returns the record."""
    os.environ["SALSA_HOME"] = str(home)  # the data config and the truth are read under the study's home
    from salsa_lib.data import data_sources  # after SALSA_HOME is set: nothing is cached at import

    results = paths.results_dir(PROFILE)
    data_config = data_sources.load_data_config(PROFILE)
    truth = data_sources.load_truth(data_config, "test")
    if truth is None:
        raise ValueError(f"{results}: the study needs the synthetic set's true correspondences")
    table = verdict.verdict_from_files(results, truth)
    seeds = verdict.per_seed_from_files(results)
    quality = pd.read_csv(results / "tables" / "correspondence_quality.csv")
    ensembles = pd.read_csv(results / "tables" / "02_ensembles.csv")
    run_log = pd.read_csv(results / "run_log.csv").drop_duplicates("notebook", keep="last")
    recorded = _runs_recorded(results)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_csv(out / SEEDS_FILE, seeds)
    seeds_sha256 = hashlib.sha256((out / SEEDS_FILE).read_bytes()).hexdigest()
    this_commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=paths.REPO_ROOT, capture_output=True,
                                 text=True).stdout.strip()
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "command": " ".join(command_line(overrides, force)),
        "runs_commit": sorted({r.get("git_commit", "") for r in recorded} - {""}),
        "recorded_at_commit": this_commit,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                   f"{round(psutil.virtual_memory().total / 2**30, 1)} GiB, {platform.system()}",
        **precision.cpu_record(),
        "wall_s": wall_s,
        "notebooks": [{"notebook": row.notebook, "seconds": float(row.seconds)} for row in run_log.itertuples()],
        "precision": sorted({r["precision"] for r in recorded if "precision" in r}),
        "students_per_kind": {kind: int(n) for kind, n in seeds[seeds.weights == "best"].groupby("kind").size().items()},
        "verdict": json.loads(table.to_json(orient="records")),
        "estimates": json.loads(quality.to_json(orient="records")),
        "ensembles": json.loads(ensembles.to_json(orient="records")),
        "pretraining": pretraining_rows(results),
        "seeds_file": SEEDS_FILE, "seeds_sha256": seeds_sha256,
    }
    atomic_write_json(out / RECORD_FILE, result)
    draw_figure(out)
    return result


def table_from_files(out: Path = OUTPUT) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """The verdict table recomputed from the committed per-seed rows (chance, oracle and the teachers'
    estimate quality from the record), the rows, and the record; raises when the record's stored
    table differs from the recomputed one or the rows are not the ones the record names."""
    result = json.loads((out / RECORD_FILE).read_text())
    raw = (out / SEEDS_FILE).read_bytes()
    if hashlib.sha256(raw).hexdigest() != result["seeds_sha256"]:
        raise ValueError(f"{out / SEEDS_FILE} is not the file {out / RECORD_FILE} was recorded from (sha256 differs)")
    seeds = pd.read_csv(io.BytesIO(raw))
    stored = pd.DataFrame(result["verdict"])
    fixed = lambda system: {m: stored.set_index("system").loc[system, f"{m} mean"] for m in verdict.METRICS}  # noqa: E731
    quality_columns = [c for c in ("estimate ROC-AUC", "estimate AP") if c in stored]
    quality = {row["system"]: {c: row[c] for c in quality_columns}
               for _, row in stored.dropna(subset=quality_columns[-1:]).drop_duplicates("system").iterrows()}
    table = verdict.paired_table(seeds, fixed("chance"), fixed("oracle ranking"), quality)
    pd.testing.assert_frame_equal(table.reset_index(drop=True), stored[table.columns].reset_index(drop=True),
                                  check_exact=False, rtol=1e-9, check_dtype=False)
    return table, seeds, result


def draw_figure(out: Path = OUTPUT) -> None:
    """``verdict.png`` from the committed rows, stamped with their sha256."""
    import matplotlib

    matplotlib.use("Agg")
    table, seeds, result = table_from_files(out)
    fig = verdict.plot_verdict(table, seeds)
    with atomic_path(out / FIGURE_FILE, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=100, bbox_inches="tight", metadata={SOURCE_KEY: f"{SEEDS_FILE} sha256 {result['seeds_sha256']}"})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--home", type=Path, help="the study's SALSA_HOME, kept so that the study resumes there "
                                                  "(default: a new scratch folder, printed)")
    parser.add_argument("-p", nargs=2, action="append", default=[], metavar=("KEY", "VALUE"),
                        help="a notebook parameter, e.g. -p precision 32-true")
    parser.add_argument("--force", action="store_true", help="retrain every model instead of resuming")
    parser.add_argument("--record-only", action="store_true", help="record a study that already ran in --home")
    parser.add_argument("--wall-s", type=float, help="with --record-only: the wall seconds measured around that run")
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args(argv)
    overrides = dict(args.p)
    if args.home is None:
        if args.record_only:
            parser.error("--record-only needs --home (the SALSA_HOME the study ran in)")
        args.home = Path(tempfile.mkdtemp(prefix="salsa_study_"))
    if args.record_only:
        if args.wall_s is None:
            parser.error("--record-only needs --wall-s (the study's wall time, measured around its command)")
        wall_s = args.wall_s
    else:
        wall_s = run_study(args.home.resolve(), overrides, args.force)
    result = record(args.home.resolve(), wall_s, overrides, args.force, args.output)
    print(f"study recorded in {args.output}: {wall_s:,.0f} s wall, students per kind {result['students_per_kind']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
