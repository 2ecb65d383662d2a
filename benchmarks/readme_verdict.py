"""The verdicts the documentation quotes, rendered from committed result files, never typed in.

Two blocks, each between its markers:

- in ``README.md``, the study's verdict (``--profile tiny-study``, recorded by
  ``benchmarks/bench_study.py`` in ``results/benchmarks/study/``): the table is recomputed from the
  committed per-seed rows (``verdict.paired_table``, the function notebook 04 uses) and must equal the
  table the record stores; the words are ``verdict.in_words`` of it, the teachers' estimates
  ``correspondences.quality_in_words`` of the record, and the figure is the committed ``verdict.png``
  drawn from those rows;
- in ``docs/evaluation.md``, the reported default run's (``results/benchmarks/pipeline.json``, from
  ``bench_pipeline.py``): its verdict table, the members' convergence and the verdict in words. Where
  that run also stored its per-seed rows (``verdict_seeds``), the table is recomputed from them and
  must equal the stored aggregates; else each interval comes from the stored mean, std and n.

Each paired difference carries its 95 % paired t interval, and a difference is called a finding only
when its interval excludes zero. A test compares both blocks with this rendering; after a new study or
reported run, rewrite them:

    .venv/bin/python benchmarks/readme_verdict.py           # rewrite both blocks
    .venv/bin/python benchmarks/readme_verdict.py --check   # exit 1 when either differs
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
from salsa_lib.stages import correspondences, verdict

START = "<!-- verdict: rendered by benchmarks/readme_verdict.py from results/benchmarks/pipeline.json; do not edit -->"
END = "<!-- /verdict -->"
STUDY_START = "<!-- study verdict: rendered by benchmarks/readme_verdict.py from results/benchmarks/study/; do not edit -->"
STUDY_END = "<!-- /study verdict -->"
README, DEFAULT_RUN_PAGE = paths.REPO_ROOT / "README.md", paths.REPO_ROOT / "docs" / "evaluation.md"
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


def _load_bench_study():  # benchmarks/ is a folder of scripts, not a package
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_study", Path(__file__).with_name("bench_study.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


bench_study = _load_bench_study()


def render_study(folder: Path = bench_study.OUTPUT) -> str:
    """The README block for the study recorded in ``folder``."""
    table, seeds, study = bench_study.table_from_files(folder)
    bf16 = {True: "computes bf16 natively", False: "has no native bf16"}.get(study.get("cpu_native_bf16"), "")
    counts = study["students_per_kind"]
    students = ", ".join(f"{counts[kind]} {kind}" for kind in verdict.kind_order(counts))
    minutes = study["wall_s"] / 60
    commits = ", ".join(f"`{c[:7]}`" for c in study["runs_commit"]) or "not recorded"
    figure = (folder / bench_study.FIGURE_FILE).relative_to(paths.REPO_ROOT).as_posix()
    lines = [STUDY_START,
             f"The study: `{study['command']}`, trained at commit {commits} and recorded {study['date']} on "
             f"{study['cpu']} ({study['machine']}; the CPU {bf16}); every trained run recorded precision "
             f"{', '.join(study['precision'])}; {study['wall_s']:,.0f} s wall ({minutes:.0f} min). Models: {students} "
             "(the stage-1 row: the PaSST members the students started from). Test split; percent, mean ± sample "
             "std (ddof 1) over the paired students; paired differences in points as mean ± sample std "
             "[95 % paired t interval] (students ahead).", "",
             "**The teachers' estimates** (notebook 02, AP against the true training correspondences): "
             + correspondences.quality_in_words(pd.DataFrame(study["estimates"])), ""]
    lines += verdict_table(table) + ["", f"![The study's verdict: test mAP@10 of every system with its seeds, and "
                                         f"each student's paired differences, with 95 % intervals]({figure})", "",
                                     verdict.in_words(table).strip(), STUDY_END]
    return "\n".join(lines)


def replace_block(text: str, block: str, start: str = START, end: str = END, where: str = "README.md") -> str:
    first, last = text.find(start), text.find(end)
    if first < 0 or last < first:
        raise ValueError(f"{where} has no verdict block ({start!r} ... {end!r})")
    return text[:first] + block + text[last + len(end):]


def rendered(pipeline: Path, study: Path) -> dict[Path, str]:
    """Each document as it should read: the study's block in the README, the default run's in the docs."""
    wanted = {}
    for page, block, start, end in ((README, render_study(study), STUDY_START, STUDY_END),
                                    (DEFAULT_RUN_PAGE, render(json.loads(pipeline.read_text())), START, END)):
        text = wanted.get(page, page.read_text())
        wanted[page] = replace_block(text, block, start, end, page.relative_to(paths.REPO_ROOT).as_posix())
    return wanted


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 when a document differs")
    parser.add_argument("--pipeline", type=Path, default=paths.REPO_ROOT / "results" / "benchmarks" / "pipeline.json")
    parser.add_argument("--study", type=Path, default=bench_study.OUTPUT)
    args = parser.parse_args(argv)
    stale = []
    for page, text in rendered(args.pipeline, args.study).items():
        if text == page.read_text():
            continue
        stale.append(page.relative_to(paths.REPO_ROOT).as_posix())
        if not args.check:
            atomic_write_text(page, text)
    if args.check:
        print(f"verdicts differ from their result files in {', '.join(stale)}: run benchmarks/readme_verdict.py"
              if stale else "verdicts are up to date")
        return int(bool(stale))
    return 0


if __name__ == "__main__":
    sys.exit(main())
