"""Every notebook executed headlessly by the runner (papermill) on a miniature tiny-profile run."""

import json
import re

import matplotlib.image
import nbformat

import pandas as pd
import pytest

from salsa_lib import runner
from salsa_lib.profiles import MINIATURE_OVERRIDES as MINIATURE, NOTEBOOK_STAGES

pytestmark = pytest.mark.slow

# every figure a default run saves (results/<profile>/figures/<name>.png)
FIGURES = ("00_durations_and_caption_lengths", "00_true_matches_per_caption", "01_learning_rate_schedule",
           "01_pretraining_curve", "01_stage1_curves", "02_batch_targets", "02_estimate_quality",
           "02_example_correspondences", "03_stage2_curves", "04_stage1_vs_stage2", "04_rank_histogram", "04_verdict")


def test_all_notebooks_run_and_write_their_results(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SALSA_HOME", str(tmp_path))
    argv = ["--quiet"] + [x for k, v in MINIATURE.items() for x in ("-p", k, str(v))]
    assert runner.main(argv) == 0, capsys.readouterr().err
    results = tmp_path / "results" / "tiny"
    executed = sorted(p.stem for p in (results / "notebooks").glob("*.ipynb"))
    assert [name[:2] for name in executed] == sorted(NOTEBOOK_STAGES)  # every stage ran
    log = pd.read_csv(results / "run_log.csv")
    assert list(log.status) == ["ok"] * len(NOTEBOOK_STAGES)
    for notebook in sorted((results / "notebooks").glob("*.ipynb")):  # no warnings or banners for the reader
        assert stderr_outputs(notebook) == [], notebook.name

    data = pd.read_csv(results / "tables" / "data_statistics.csv")
    assert list(data.clips) == [8, 4, 4] and list(data.captions) == [40, 20, 20]
    assert json.loads((results / "data" / "data_config.json").read_text())["n_train_clips"] == 8
    members = pd.read_csv(results / "tables" / "stage1_members.csv")
    assert list(members.seed) == [409194, 409195]
    assert members["mAP@10"].between(0, 1).all()
    quality = pd.read_csv(results / "tables" / "correspondence_quality.csv")
    assert list(quality.estimate)[:4] == ["i = j (stage-1 assumption)", "member0", "member1", "ensemble"]
    assert quality.iloc[4].estimate.startswith("truth") and quality.iloc[4].AP == 1.0
    comparison = pd.read_csv(results / "tables" / "stage2_vs_stage1_validation.csv")
    assert list(comparison.stage) == [1, 1, 2, 2, 2]
    evaluated = pd.read_csv(results / "metrics.csv")
    models = ["member0", "member1", "control_from_member0", "ensemble_from_member0", "truth_from_member0"]
    assert list(evaluated.model) == [m for m in models for _ in "bl"]
    assert list(evaluated.weights) == ["best", "last"] * len(models)
    assert list(pd.read_csv(results / "tables" / "01_pretraining_tagging.csv").metric)[0] == "tag mAP"
    verdict = pd.read_csv(results / "tables" / "verdict.csv", keep_default_na=False)
    systems = ["i = j (stage 1)", "control", "ensemble", "truth"]
    assert list(zip(verdict.system, verdict.weights)) == [("chance", ""), *[(s, w) for s in systems for w in ("best", "last")],
                                                          ("oracle ranking", "")]
    assert (verdict.loc[verdict.system.isin(["ensemble", "truth"]), "mAP@10 Δ stage 1 wins"] != "").all()
    words = (results / "tables" / "verdict_words.md").read_text()
    assert "**Best-validation weights" in words and "- ensemble: " in words and "against the control" in words
    grid = json.loads((results / "stage2" / "grid.json").read_text())
    assert [run["model"] for run in grid["runs"]] == ["ensemble_from_member0", "control_from_member0", "truth_from_member0"]
    for model in models[2:]:  # stage 2 is the stage-1 recipe run again, from the records on disk
        student = json.loads((results / "stage2" / model / "run.json").read_text())
        member = json.loads((results / "stage1" / "member0" / "run.json").read_text())
        for field in ("epochs", "warmup_epochs", "rampdown_start", "rampdown_stop", "lr_audio_encoder", "batch_size"):
            assert student["run"][field] == member["run"][field], (model, field)
        assert student["precision"] == member["precision"] and student["precision"] in ("32-true", "bf16-mixed")
    convergence = pd.read_csv(results / "tables" / "01_convergence.csv")
    assert list(convergence.member) == ["member0", "member1"]
    assert convergence["rise over the last quarter (points)"].isna().all()  # one epoch: no rise to measure
    assert not (results / "tables" / "04_readme_example_queries.csv").exists()  # synthetic clips have no Freesound ids
    assert (evaluated.split == "test").all() and evaluated["multi mAP@10"].between(0, 1).all()
    assert (results / "tables" / "04_example_queries.csv").exists()
    demo_queries = pd.read_csv(results / "tables" / "05_example_queries.csv")
    assert len(demo_queries) == 3 * 4 and set(demo_queries["rank"]) == {1, 2, 3, 4}  # 3 queries, top 5 of 4 clips
    assert sorted(p.stem for p in (results / "figures").glob("*.png")) == sorted(FIGURES)
    for figure in FIGURES:  # each one opens as an image of a readable size, not an empty canvas
        image = matplotlib.image.imread(results / "figures" / f"{figure}.png")
        assert image.shape[0] >= 200 and image.shape[1] >= 300, (figure, image.shape)
        assert image[..., :3].std() > 0.05, f"{figure}: the image is (nearly) blank"
    for notebook in sorted((results / "notebooks").glob("*.ipynb")):  # quiet: no echoed return values
        assert "PosixPath(" not in _output_text(notebook), notebook.name
    demo = _output_text(results / "notebooks" / "05_query_demo.ipynb")
    assert "model: stage 2: ensemble_from_member0" in demo and "SALSA: distilled" in demo  # the SALSA student
    assert demo.count("<audio controls") == 3 * 4 and demo.count("<img") >= 3 * 4  # players kept when executed

    assert runner.main(argv) == 0  # everything current: nothing reruns
    assert capsys.readouterr().out.count("up to date, skipped") == len(NOTEBOOK_STAGES)

    # determinism drill: the whole profile again from scratch (--force retrains every model) with the
    # same seeds gives identical tables, metrics included; only timings and dates may differ
    first = _tables(results)
    assert runner.main(argv + ["--force"]) == 0
    assert capsys.readouterr().out.count("up to date, skipped") == 0
    second = _tables(results)
    assert first.keys() == second.keys() and "metrics.csv" in first
    for name, table in first.items():
        pd.testing.assert_frame_equal(table, second[name], obj=name)


def stderr_outputs(path) -> list[str]:
    """What a notebook's cells wrote to stderr, progress bars (tqdm's ``|...| n/N``) left out."""
    notebook = nbformat.read(path, as_version=4)
    texts = [output.get("text", "") for cell in notebook.cells for output in cell.get("outputs", [])
             if output.get("name") == "stderr"]
    return [text for text in texts if not re.fullmatch(r"(\s*[^\n]*\|[^\n]*\| *\d+/\d+[^\n]*\s*)+", text)]


def _output_text(path) -> str:
    """Everything a notebook's cells output: streams, plain text and HTML."""
    notebook = nbformat.read(path, as_version=4)
    texts = []
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            texts.append(output.get("text", ""))
            for kind in ("text/plain", "text/html"):
                value = output.get("data", {}).get(kind, "")
                texts.append("".join(value) if isinstance(value, list) else value)
    return "\n".join(texts)


def _tables(results) -> dict[str, pd.DataFrame]:
    """Every CSV result of a run without its wall-clock columns."""
    tables = {}
    for path in sorted([results / "metrics.csv", *(results / "tables").glob("*.csv")]):
        table = pd.read_csv(path)
        clock = [c for c in table.columns if any(w in c.lower() for w in ("second", "time", "date", "when"))]
        tables[path.name] = table.drop(columns=clock)
    return tables
