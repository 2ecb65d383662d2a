"""The README's verdict is the reported run's: rendered from the committed pipeline.json, word for word."""

import copy
import importlib.util
import json

import pytest

from salsa_lib import paths


def _load(name: str):  # benchmarks/ is a folder of scripts, not a package
    spec = importlib.util.spec_from_file_location(name, paths.REPO_ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


readme_verdict = _load("readme_verdict")

PIPELINE = paths.REPO_ROOT / "results" / "benchmarks" / "pipeline.json"


def _run() -> dict:
    return json.loads(PIPELINE.read_text())


def test_the_readme_verdict_is_rendered_from_the_committed_run():
    readme = (paths.REPO_ROOT / "README.md").read_text()
    assert readme.count(readme_verdict.START) == 1 and readme.count(readme_verdict.END) == 1
    assert readme_verdict.replace_block(readme, readme_verdict.render(_run())) == readme, \
        "README.md's verdict differs from results/benchmarks/pipeline.json: run benchmarks/readme_verdict.py"
    assert readme_verdict.main(["--check"]) == 0


def test_the_rendering_quotes_the_runs_numbers_words_and_machine():
    run = _run()
    block = readme_verdict.render(run)
    assert run["verdict_words"].strip() in block
    assert run["commit"][:7] in block and run["machine"] in block
    assert all(p in block for p in run["precision"])
    stage1 = next(r for r in run["verdict"] if r["system"] == "i = j (stage 1)" and r["weights"] == "best")
    assert f"{100 * stage1['mAP@10 mean']:.2f} ± {100 * stage1['mAP@10 std']:.2f}" in block
    changed = copy.deepcopy(run)
    row = next(r for r in changed["verdict"] if r["system"] == "i = j (stage 1)" and r["weights"] == "best")
    row["mAP@10 mean"] = 0.987654
    assert "98.77" in readme_verdict.render(changed) and "98.77" not in block


def test_the_table_is_notebook_04s_compact_table():
    """One rendering for both: stage 1 minus the control is not printed as a result of its own."""
    run = _run()
    lines = readme_verdict.verdict_table(run["verdict"])
    assert lines[0] == "| system | weights | seeds | mAP@10 | Δ stage 1 | Δ control | multi mAP@10 | estimate ROC-AUC / AP |"
    stage1 = next(line for line in lines if line.startswith("| i = j (stage 1) | best |"))
    assert stage1.split(" | ")[4:6] == ["", ""]
    control = next(r for r in run["verdict"] if r["system"] == "control" and r["weights"] == "best")
    delta = control["mAP@10 Δ stage 1 mean"]
    shown = next(line for line in lines if line.startswith("| control (`L_sup` again) | best |"))
    assert f"{100 * delta:+.2f}".replace("-", "−") in shown and f"({control['mAP@10 Δ stage 1 wins']})" in shown


def test_a_run_without_a_verdict_is_refused_and_a_readme_without_the_block_too():
    run = {**_run(), "verdict": None}
    with pytest.raises(ValueError, match="no verdict"):
        readme_verdict.render(run)
    with pytest.raises(ValueError, match="no verdict block"):
        readme_verdict.replace_block("# README\nno block here\n", "x")
