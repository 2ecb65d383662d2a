"""The README's verdict is the reported run's: rendered from the committed pipeline.json, word for word."""

import copy
import json
import re

import numpy as np
import pandas as pd
import pytest

from salsa_lib import paths
from salsa_lib.stages import verdict

import benchmark_scripts


readme_verdict = benchmark_scripts.load("readme_verdict")
bench_pipeline = benchmark_scripts.load("bench_pipeline")

PIPELINE = paths.REPO_ROOT / "results" / "benchmarks" / "pipeline.json"


def _run() -> dict:
    return json.loads(PIPELINE.read_text())


def test_the_default_runs_verdict_is_rendered_from_the_committed_run():
    page = readme_verdict.DEFAULT_RUN_PAGE.read_text()
    assert page.count(readme_verdict.START) == 1 and page.count(readme_verdict.END) == 1
    assert readme_verdict.replace_block(page, readme_verdict.render(_run())) == page, \
        "docs/evaluation.md's verdict differs from results/benchmarks/pipeline.json: run benchmarks/readme_verdict.py"
    assert readme_verdict.main(["--check"]) == 0


def test_the_rendering_quotes_the_runs_numbers_words_and_machine():
    run = _run()
    block = readme_verdict.render(run)
    assert run["commit"][:7] in block and run["machine"] in block
    assert all(p in block for p in run["precision"])
    control = next(r for r in run["verdict"] if r["system"] == "control" and r["weights"] == "best")
    assert f"{100 * control['mAP@10 mean']:.2f} ± {100 * control['mAP@10 std']:.2f}" in block
    stage1 = next(r for r in run["verdict"] if r["system"] == "i = j (stage 1)" and r["weights"] == "best")
    assert f"| {100 * stage1['mAP@10 mean']:.2f} |" in block  # one member: a mean without a spread
    changed = {k: v for k, v in copy.deepcopy(run).items() if k != "verdict_seeds"}  # the stored rows alone
    row = next(r for r in changed["verdict"] if r["system"] == "i = j (stage 1)" and r["weights"] == "best")
    row["mAP@10 mean"] = 0.987654
    assert "98.77" in readme_verdict.render(changed) and "98.77" not in block


def test_the_table_is_notebook_04s_compact_table():
    """One rendering for both: stage 1 minus the control is not printed as a result of its own."""
    run = _run()
    lines = readme_verdict.verdict_table(run["verdict"])
    assert lines[0] == ("| system | weights | seeds | mAP@10 (%) | Δ stage 1 | Δ control | multi mAP@10 (%) | multi Δ stage 1 "
                        "| multi Δ control | estimate ROC-AUC / AP (%) |")
    stage1 = next(line for line in lines if line.startswith("| i = j (stage 1) | best |"))
    assert stage1.split(" | ")[4:6] == ["", ""]
    control = next(r for r in run["verdict"] if r["system"] == "control" and r["weights"] == "best")
    delta = control["mAP@10 Δ stage 1 mean"]
    shown = next(line for line in lines if line.startswith("| control (`L_sup` again) | best |"))
    assert f"{100 * delta:+.2f}".replace("-", "−") in shown and f"({control['mAP@10 Δ stage 1 wins']})" in shown
    # its 95 % paired t interval, from the stored mean, std and n (the run stored no interval)
    n = int(control["mAP@10 Δ stage 1 wins"].split("/")[1])
    low, high = verdict.t_interval(delta, control["mAP@10 Δ stage 1 std"], n)
    assert f"[{100 * low:+.2f}, {100 * high:+.2f}]".replace("-", "−") in shown


def _words(block: str) -> str:
    """The block's words: what follows the table, up to the end marker."""
    body = block.split(readme_verdict.END)[0].rstrip("\n")
    return body[body.rindex("|\n\n") + 3:]


def test_the_readme_words_are_in_words_of_the_stored_rows():
    """Not the words the run wrote then: the words notebook 04's code writes from the stored rows now."""
    run = _run()
    words = _words(readme_verdict.render(run))
    assert words == verdict.in_words(pd.DataFrame(run["verdict"])).strip()
    assert words.endswith(verdict.conclusion(pd.DataFrame(run["verdict"])))
    assert "within one std" not in words and "95 % CI" in words and "On multi mAP@10" in words
    # a difference whose interval excludes zero is called a finding (the stored rows alone, without the
    # seeds): narrow the interval of one against the control that the stored run cannot tell from zero
    changed = {k: v for k, v in copy.deepcopy(run).items() if k != "verdict_seeds"}
    low, high = verdict.ci_columns("mAP@10", "control")
    row = next(r for r in changed["verdict"] if r["weights"] == "best" and r.get("mAP@10 Δ control mean") is not None
               and verdict.t_interval(r["mAP@10 Δ control mean"], r["mAP@10 Δ control std"], r["seeds"])[0] < 0
               < verdict.t_interval(r["mAP@10 Δ control mean"], r["mAP@10 Δ control std"], r["seeds"])[1])
    row["mAP@10 Δ control std"] = 0.001
    if low in row:  # stored intervals follow the std
        row[low], row[high] = verdict.t_interval(row["mAP@10 Δ control mean"], 0.001, 3)
    words_changed = _words(readme_verdict.render(changed))
    assert words_changed == verdict.in_words(pd.DataFrame(changed["verdict"])).strip() != words
    # e.g. "told from zero: self and mixed behind on mAP@10", in the sentence against the control
    call = re.compile(rf"told from zero:[^.]*\b{row['system']}\b(?:,? (?:and )?\w+)* "
                      rf"{'ahead' if row['mAP@10 Δ control mean'] > 0 else 'behind'} on mAP@10")
    against_control = "Against the control"
    assert not call.search(words.split(against_control)[-1]) and call.search(words_changed.split(against_control)[-1])


def _fake_results(folder):
    """A results folder as notebook 04 leaves it: 3 members, 3 students each of control and ensemble,
    best and last weights, metrics.csv, the stage-2 grid and run records, tables/verdict.csv."""
    members, kinds = (0.30, 0.20, 0.25), {"control": (0.32, 0.22, 0.26), "ensemble": (0.35, 0.21, 0.30)}
    rows = [{"stage": 1, "model": f"member{k}", "mAP@10": v, "multi mAP@10": v + 0.1} for k, v in enumerate(members)]
    grid = []
    for kind, values in kinds.items():
        for k, v in enumerate(values):
            model = f"{kind}_from_member{k}"
            rows.append({"stage": 2, "model": model, "mAP@10": v, "multi mAP@10": 2 * v})
            run = {"teachers": kind, "init_member": k, "sup_weight": 1.0 if kind == "control" else 0.0,
                   "distill_weight": 0.0 if kind == "control" else 1.0}
            (folder / "stage2" / model).mkdir(parents=True)
            (folder / "stage2" / model / "run.json").write_text(json.dumps({"run": run}))
            grid.append({"model": model, **run})
    (folder / "stage2" / "grid.json").write_text(json.dumps({"runs": grid}))
    rows = [{**r, "weights": "best"} for r in rows] + [{**r, "weights": "last", "mAP@10": r["mAP@10"] + 0.01} for r in rows]
    pd.DataFrame(rows).to_csv(folder / "metrics.csv", index=False)
    truth = np.repeat(np.eye(5, dtype=bool), 5, axis=1)
    (folder / "tables").mkdir()
    verdict.verdict_from_files(folder, truth).to_csv(folder / "tables" / "verdict.csv", index=False)


def test_a_run_with_per_seed_rows_renders_the_table_they_give_and_refuses_rows_that_disagree(tmp_path):
    _fake_results(tmp_path)
    outcome = json.loads(json.dumps(bench_pipeline.run_outcome(tmp_path)))  # as pipeline.json stores it
    seeds = pd.DataFrame(outcome["verdict_seeds"])
    assert len(seeds) == 2 * (3 + 3 + 3) and set(seeds.columns) >= {"kind", "student", "weights", "mAP@10"}
    run = {**_run(), "verdict_words": "stale words of an older rendering", **outcome}
    stored = pd.DataFrame(outcome["verdict"])
    rebuilt = verdict.paired_table(seeds, *({m: stored.set_index("system").loc[name, f"{m} mean"]
                                             for m in verdict.METRICS} for name in ("chance", "oracle ranking")))
    block = readme_verdict.render(run)
    assert _words(block) == verdict.in_words(rebuilt).strip()
    assert "stale words" not in block
    assert "| ensemble teachers | best | 3 | 28.67 ± 7.09 | +3.67 ± 2.31 [−2.07, +9.40] (3/3) |" in block
    tampered = copy.deepcopy(run)
    student = next(r for r in tampered["verdict_seeds"] if r["kind"] == "ensemble" and r["student"] == 1
                   and r["weights"] == "best")
    student["mAP@10"] += 0.05  # the per-seed rows no longer give the stored table
    with pytest.raises(ValueError, match=r"verdict row 'ensemble' \(best\) stores mAP@10 mean = 0\.2866"):
        readme_verdict.render(tampered)


def test_a_run_without_a_verdict_is_refused_and_a_readme_without_the_block_too():
    run = {**_run(), "verdict": None}
    with pytest.raises(ValueError, match="no verdict"):
        readme_verdict.render(run)
    with pytest.raises(ValueError, match="no verdict block"):
        readme_verdict.replace_block("# README\nno block here\n", "x")
