"""The README's verdict section, rendered from the reported run's ``results/benchmarks/pipeline.json``.

The README quotes one timed default run (``bench_pipeline.py``). Its verdict table, the members'
convergence and the verdict in words (the same sentences notebook 04 writes) are rendered here from
that file alone, so the README says what that run's table says and nothing more. A test compares the
README's block with this rendering; after a new reported run, rewrite the block:

    .venv/bin/python benchmarks/readme_verdict.py           # rewrite the block in README.md
    .venv/bin/python benchmarks/readme_verdict.py --check   # exit 1 when README.md differs
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd

from salsa_lib import paths
from salsa_lib.files import atomic_write_text
from salsa_lib.stages import verdict

START = "<!-- verdict: rendered by benchmarks/readme_verdict.py from results/benchmarks/pipeline.json; do not edit -->"
END = "<!-- /verdict -->"
LABELS = {"control": "control (`L_sup` again)", "ensemble": "ensemble teachers", "self": "self teacher",
          "truth": "truth teachers"}


def verdict_table(rows: list[dict]) -> list[str]:
    """Notebook 04's compact verdict table (``verdict.compact``) as markdown, kinds of teacher in words."""
    table = verdict.compact(pd.DataFrame(rows))
    table["system"] = table["system"].map(lambda system: LABELS.get(system, system))
    lines = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in table.itertuples(index=False)]
    return lines


def _convergence(members: list[dict]) -> str:
    rises = ", ".join(f"{m['rise over the last quarter (points)']:+.2f}".replace("-", "−") for m in members)
    finals = " / ".join(f"{100 * m['last-epoch val mAP@10']:.1f}" for m in members)
    flat = sum(bool(m["flat"]) for m in members)
    return (f"Stage-1 validation mAP@10 over the last quarter of the epochs rose by {rises} points "
            f"({flat} of {len(members)} members flat, i.e. at most 0.5 points), ending at {finals} %.")


def render(run: dict) -> str:
    """The README block for one ``bench_pipeline.py`` result."""
    if not run.get("verdict") or not run.get("verdict_words"):
        raise ValueError("pipeline.json has no verdict: report a full default run (not --quick)")
    bf16 = {True: "computes bf16 natively", False: "has no native bf16"}.get(run.get("cpu_native_bf16"), "")
    cpu = run.get("cpu") or run["machine"]
    lines = [START,
             f"The reported run: `{run['command']}` at commit `{run['commit'][:7]}`, {run['date']}, on {cpu} "
             f"({run['machine']}; the CPU {bf16}); every trained run recorded precision "
             f"{', '.join(run['precision'])}; {run['wall_s']:,.0f} s wall. Test split; percent, mean ± sample std "
             "(ddof 1) over the paired students; paired differences in points, with the students ahead.", ""]
    if run.get("convergence"):
        lines += [_convergence(run["convergence"]), ""]
    lines += verdict_table(run["verdict"]) + ["", run["verdict_words"].strip(), END]
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
