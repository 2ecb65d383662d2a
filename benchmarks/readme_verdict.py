"""The README's verdict section, rendered from the reported run's ``results/benchmarks/pipeline.json``.

The README quotes one timed default run (``bench_pipeline.py``). Its verdict table, the members'
convergence and the verdict in words are rendered here from that file alone, so the README says what
that run's table says and nothing more. Table and words come from ``verdict.compact`` and
``verdict.in_words`` of the stored rows, the same functions notebook 04 uses: each paired difference
with its 95 % paired t interval (computed from the stored mean, std and n where a run stored no
interval), and a difference called a finding only when its interval excludes zero. Where the run also
stored its per-seed rows (``verdict_seeds``), the table is recomputed from them and must equal the
stored aggregates. A test compares the README's block with this rendering; after a new reported run,
rewrite the block:

    .venv/bin/python benchmarks/readme_verdict.py           # rewrite the block in README.md
    .venv/bin/python benchmarks/readme_verdict.py --check   # exit 1 when README.md differs
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from salsa_lib import paths
from salsa_lib.files import atomic_write_text
from salsa_lib.stages import verdict

START = "<!-- verdict: rendered by benchmarks/readme_verdict.py from results/benchmarks/pipeline.json; do not edit -->"
END = "<!-- /verdict -->"
LABELS = {"control": "control (`L_sup` again)", "ensemble": "ensemble teachers", "self": "self teacher",
          "truth": "truth teachers"}


def _fixed(stored: pd.DataFrame, system: str) -> dict:
    """The stored means of a row without seeds (chance, the oracle ranking), per metric."""
    row = stored[stored.system == system]
    return {} if row.empty else {m: row.iloc[0][f"{m} mean"] for m in verdict.METRICS}


def _quality(stored: pd.DataFrame) -> dict:
    """Each kind's stored estimate quality (the same on every row of the kind)."""
    columns = [c for c in ("estimate ROC-AUC", "estimate AP") if c in stored]
    rows = stored.dropna(subset=columns[-1:]).drop_duplicates("system") if columns else stored.iloc[:0]
    return {row["system"]: {c: row[c] for c in columns} for _, row in rows.iterrows()}


def _same(stored, rebuilt) -> bool:
    missing = lambda v: v is None or (isinstance(v, float) and np.isnan(v))  # noqa: E731
    if missing(stored) or missing(rebuilt):
        return missing(stored) and missing(rebuilt)
    if isinstance(stored, str) or isinstance(rebuilt, str):
        return str(stored) == str(rebuilt)
    return bool(np.isclose(float(stored), float(rebuilt), rtol=1e-9, atol=1e-12))


def verdict_rows(run: dict) -> pd.DataFrame:
    """The verdict table of a stored run: its stored rows, or, where it stored its per-seed rows too,
    ``verdict.paired_table`` of those, after checking that they give every stored aggregate."""
    stored = pd.DataFrame(run["verdict"])
    if not run.get("verdict_seeds"):
        return stored
    rebuilt = verdict.paired_table(pd.DataFrame(run["verdict_seeds"]), _fixed(stored, "chance"),
                                   _fixed(stored, "oracle ranking"), _quality(stored))
    key = lambda frame: list(zip(frame.system, frame.weights.fillna("").replace({None: ""})))  # noqa: E731
    if key(stored) != key(rebuilt):
        raise ValueError(f"pipeline.json: the per-seed rows give the verdict rows {key(rebuilt)}, "
                         f"the stored verdict has {key(stored)}")
    for (system, weights), (_, old), (_, new) in zip(key(stored), stored.iterrows(), rebuilt.iterrows()):
        for column in stored.columns.drop(["system", "weights"]):
            if not _same(old[column], new.get(column)):
                raise ValueError(f"pipeline.json: verdict row {system!r} ({weights or 'no weights'}) stores "
                                 f"{column} = {old[column]!r}, its per-seed rows give {new.get(column)!r}")
    return rebuilt


def verdict_table(rows) -> list[str]:
    """Notebook 04's compact verdict table (``verdict.compact``) as markdown, kinds of teacher in words."""
    table = verdict.compact(pd.DataFrame(rows))
    table["system"] = table["system"].map(lambda system: LABELS.get(system, system))
    lines = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in table.itertuples(index=False)]
    return lines


def _convergence(members: list[dict]) -> str:
    rises = ", ".join(f"{m['rise over the last quarter (points)']:+.2f}".replace("-", "−") for m in members)
    finals = " / ".join(f"{100 * m['last-epoch val mAP@10']:.1f}" for m in members)
    # the learning rate is near its minimum over the last quarter, so a flat tail says nothing about
    # convergence: benchmarks/bench_stage1_length.py measures that (a second, longer schedule)
    return (f"Stage-1 validation mAP@10 changed by {rises} points over the last quarter of the epochs, where "
            f"the learning rate is near its minimum, ending at {finals} %; whether longer training would "
            "help is measured by `benchmarks/bench_stage1_length.py`, not read from this tail.")


def render(run: dict) -> str:
    """The README block for one ``bench_pipeline.py`` result."""
    if not run.get("verdict"):
        raise ValueError("pipeline.json has no verdict: report a full default run (not --quick)")
    table = verdict_rows(run)
    bf16 = {True: "computes bf16 natively", False: "has no native bf16"}.get(run.get("cpu_native_bf16"), "")
    cpu = run.get("cpu") or run["machine"]
    lines = [START,
             f"The reported run: `{run['command']}` at commit `{run['commit'][:7]}`, {run['date']}, on {cpu} "
             f"({run['machine']}; the CPU {bf16}); every trained run recorded precision "
             f"{', '.join(run['precision'])}; {run['wall_s']:,.0f} s wall. Test split; percent, mean ± sample std "
             "(ddof 1) over the paired students; paired differences in points as mean ± sample std "
             "[95 % paired t interval] (students ahead).", ""]
    if run.get("convergence"):
        lines += [_convergence(run["convergence"]), ""]
    lines += verdict_table(table) + ["", verdict.in_words(table).strip(), END]
    return "\n".join(lines)


def replace_block(readme: str, block: str) -> str:
    start, end = readme.find(START), readme.find(END)
    if start < 0 or end < start:
        raise ValueError(f"README.md has no verdict block ({START!r} ... {END!r})")
    return readme[:start] + block + readme[end + len(END):]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 when README.md differs")
    parser.add_argument("--pipeline", type=Path, default=paths.REPO_ROOT / "results" / "benchmarks" / "pipeline.json")
    args = parser.parse_args(argv)
    readme_path = paths.REPO_ROOT / "README.md"
    readme = readme_path.read_text()
    wanted = replace_block(readme, render(json.loads(args.pipeline.read_text())))
    if args.check:
        print("README verdict is up to date" if wanted == readme else
              f"README verdict differs from {args.pipeline}: run benchmarks/readme_verdict.py")
        return int(wanted != readme)
    atomic_write_text(readme_path, wanted)
    return 0


if __name__ == "__main__":
    sys.exit(main())
