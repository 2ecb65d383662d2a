"""Every notebook executed headlessly by the runner (papermill) on a miniature tiny-profile run."""

import json

import pandas as pd
import pytest

from salsa_lib import runner
from salsa_lib.config import NOTEBOOK_STAGES

pytestmark = pytest.mark.slow

MINIATURE = {
    # 00_data
    "n_train_clips": 8, "n_val_clips": 4, "n_test_clips": 4, "clip_seconds": 1.0, "source_sample_rate": 16000,
    # 01_stage1 (and 02/03, which share these names)
    "members": 2, "passt_width": 64, "passt_depth": 1, "passt_heads": 2, "text_trainable_layers": 1,
    "embed_dim": 32, "train_seconds": 1.0, "eval_seconds": 1.0, "window_seconds": 1.0, "batch_size": 10,
    "eval_batch_size": 4, "epochs": 1, "warmup_epochs": 0.5, "rampdown_start": 0.5, "rampdown_stop": 1.0,
    "pretrain_clips": 12, "pretrain_epochs": 1,
    # 03_stage2: every teacher kind of the default grid, one student each
    "students": 1,
}


def test_all_notebooks_run_and_write_their_results(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SALSA_HOME", str(tmp_path))
    argv = ["--quiet"] + [x for k, v in MINIATURE.items() for x in ("-p", k, str(v))]
    assert runner.main(argv) == 0, capsys.readouterr().err
    results = tmp_path / "results" / "tiny"
    executed = sorted(p.stem for p in (results / "notebooks").glob("*.ipynb"))
    assert [name[:2] for name in executed] == sorted(NOTEBOOK_STAGES)  # every stage ran
    log = pd.read_csv(results / "run_log.csv")
    assert list(log.status) == ["ok"] * len(NOTEBOOK_STAGES)

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
    assert list(evaluated.model) == ["member0", "member1", "control_from_member0", "ensemble_from_member0",
                                     "truth_from_member0"]
    assert list(pd.read_csv(results / "tables" / "01_pretraining_tagging.csv").metric)[0] == "tag mAP"
    verdict = pd.read_csv(results / "tables" / "verdict.csv")
    assert list(verdict.system) == ["chance", "i = j (stage 1)", "control", "ensemble", "truth", "oracle ranking"]
    assert (evaluated.split == "test").all() and evaluated["multi mAP@10"].between(0, 1).all()
    assert (results / "tables" / "04_example_queries.csv").exists()
    demo_queries = pd.read_csv(results / "tables" / "05_example_queries.csv")
    assert len(demo_queries) == 3 * 4 and set(demo_queries["rank"]) == {1, 2, 3, 4}  # 3 queries, top 5 of 4 clips
    for figure in ("00_durations_and_caption_lengths", "00_true_matches_per_caption",
                   "01_learning_rate_schedule", "01_stage1_curves", "02_batch_targets",
                   "02_estimate_quality", "02_example_correspondences", "03_stage2_curves",
                   "04_stage1_vs_stage2", "04_rank_histogram", "04_verdict"):
        assert (results / "figures" / f"{figure}.png").stat().st_size > 1000

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


def _tables(results) -> dict[str, pd.DataFrame]:
    """Every CSV result of a run without its wall-clock columns."""
    tables = {}
    for path in sorted([results / "metrics.csv", *(results / "tables").glob("*.csv")]):
        table = pd.read_csv(path)
        clock = [c for c in table.columns if any(w in c.lower() for w in ("second", "time", "date", "when"))]
        tables[path.name] = table.drop(columns=clock)
    return tables
