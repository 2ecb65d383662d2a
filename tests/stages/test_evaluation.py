"""Evaluation: metrics.csv over all trained models, tables, examples, and the command line."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from salsa_lib import runs
from salsa_lib.core.checkpoints import load_member
from salsa_lib.data import data_sources
from salsa_lib.errors import NonFiniteError
from salsa_lib.stages import evaluation, stage1
from salsa_lib.stages.evaluation import Evaluation


def test_mean_and_std_in_percent_with_the_verdicts_sample_std():
    table = pd.DataFrame({"stage": [1, 1, 2, 3, 3, 3], "mAP@10": [0.1, 0.2, 0.3, 0.1, 0.2, 0.6],
                          "R@1": [0.0, 0.1, 0.2, 0.0, 0.0, 0.0], "R@5": 0.5, "R@10": 1.0})
    out = evaluation.mean_and_std(table, by=["stage"]).set_index("stage")
    # ddof 1: the std of (10, 20) is 7.07, not the population std 5.0
    assert out.loc[1, "mAP@10 (%)"] == "15.00 ± 7.07" and out.loc[1, "seeds"] == 2
    assert out.loc[3, "mAP@10 (%)"] == f"30.00 ± {100 * np.std([0.1, 0.2, 0.6], ddof=1):.2f}" == "30.00 ± 26.46"
    assert out.loc[3, "R@5 (%)"] == "50.00 ± 0.00"
    assert out.loc[2, "R@1 (%)"] == "20.00 ± n/a" and out.loc[2, "seeds"] == 1  # one seed: no spread to report


def test_top_k_examples_mark_the_own_clip_and_every_truly_matching_one():
    split = type("Split", (), {"file_names": ["a.wav", "b.wav"], "caption": lambda self, i: f"caption {i}"})()
    similarity = np.zeros((10, 2))
    similarity[3] = [0.9, 0.1]  # caption 3 belongs to clip 0 (3 // 5) and ranks it first
    similarity[7] = [0.8, 0.2]  # caption 7 belongs to clip 1 but ranks clip 0 first
    result = Evaluation({}, similarity, np.ones(10))
    truth = np.zeros((2, 10), dtype=bool)
    truth[np.arange(10) // 5, np.arange(10)] = True  # every caption truly describes its own clip
    truth[0, 7] = True  # and caption 7 clip 0 as well
    table = evaluation.top_k_examples(result, split, [3, 7], k=2, truth=truth)
    assert list(table["own clip"]) == ["✓", "✗", "✗", "✓"]
    assert list(table["truly matches"]) == ["✓", "✗", "✓", "✓"]
    assert evaluation.examples_in_words(table) == ("2 of the 4 results shown are the caption's own clip; 1 other clip "
                                                   "truly matches its caption, yet the protocol counts it as a mistake.")
    assert "truly matches" not in evaluation.top_k_examples(result, split, [3], k=2)


def _scored(tmp_path):
    """A metrics.csv-shaped table of 2 members, 2 ensemble and 2 control students (run records on
    disk), best and last weights; member1's last weights are its best ones."""
    rows = []
    for stage, model, kind in [(1, "member0", ""), (1, "member1", ""), (2, "ensemble_from_member0", "ensemble"),
                               (2, "ensemble_from_member1", "ensemble"), (2, "control_from_member0", "control"),
                               (2, "control_from_member1", "control")]:
        if stage == 2:
            (tmp_path / model).mkdir(parents=True)
            weights = (1.0, 0.0) if kind == "control" else (0.0, 1.0)
            (tmp_path / model / "run.json").write_text(json.dumps(
                {"run": {"teachers": kind, "sup_weight": weights[0], "distill_weight": weights[1]}}))
        for w in ("best", "last"):
            rows.append({"stage": stage, "model": model, "weights": w, "same_weights_as_best": w == "last" and model == "member1",
                         "mAP@10": 0.2 + 0.01 * len(rows), "R@1": 0.1, "R@5": 0.3, "R@10": 0.5})
    return pd.DataFrame(rows)


def test_kinds_compact_view_and_results_by_kind(tmp_path):
    table = _scored(tmp_path)
    kinds = evaluation.model_kinds(table, tmp_path)
    assert list(kinds[::2]) == ["i = j (stage 1)"] * 2 + ["ensemble"] * 2 + ["control"] * 2
    view = evaluation.compact_view(table)
    assert list(view.columns) == ["model", "weights", "mAP@10 (%)", "R@1 (%)", "R@5 (%)", "R@10 (%)", "note"]
    assert list(view.note[view.note != ""].index) == [3]  # member1's last row repeats its best weights
    assert view.loc[0, "mAP@10 (%)"] == "20.00"
    ours = evaluation.results_by_kind(table, kinds)
    # the verdict's order of kinds (stage 1, control, teachers), best before last
    assert list(zip(ours.kind, ours.weights)) == [(k, w) for k in ("i = j (stage 1)", "control", "ensemble")
                                                  for w in ("best", "last")]
    assert ours.set_index(["kind", "weights"]).loc[("control", "best"), "mAP@10 (%)"] == "29.00 ± 1.41"
    # a stage-2 run with other loss weights is a kind of its own
    record = tmp_path / "ensemble_from_member1" / "run.json"
    record.write_text(json.dumps({"run": {"teachers": "ensemble", "sup_weight": 1.0, "distill_weight": 1.0}}))
    assert evaluation.model_kinds(table, tmp_path)[6] == "ensemble (sup 1, dist 1)"


def test_a_member_of_another_family_is_a_kind_of_its_own(tmp_path):
    table = _scored(tmp_path / "stage2")
    stage1 = tmp_path / "stage1"
    for name, family in (("member0", "passt_small"), ("member1", "frames_small")):
        (stage1 / name).mkdir(parents=True)
        (stage1 / name / "run.json").write_text(json.dumps({"run": {"audio_encoder": family}}))
    (stage1 / "members.json").write_text(json.dumps({"members": ["member0", "member1"]}))
    kinds = evaluation.model_kinds(table, tmp_path / "stage2")
    assert list(kinds[:4]) == ["i = j (stage 1)"] * 2 + ["i = j (frames_small)"] * 2


def test_rank_curves_are_recall_at_r_and_the_figures_draw(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    table = _scored(tmp_path)
    kinds = evaluation.model_kinds(table, tmp_path)
    ranks = {f"{m} ({w})": Evaluation({}, None, np.array([1, 2, 3, 30, 5 + i])) for i, (m, w) in
             enumerate(zip(table.model, table.weights))}
    curves = evaluation.rank_curves(ranks, table, kinds, max_rank=20)
    assert len(curves) == 6 * 20 and set(curves.model) == set(table.model)  # best weights only
    member0 = curves[curves.model == "member0"].set_index("rank").fraction
    assert member0[1] == 0.2 and member0[3] == 0.6 and member0[5] == 0.8 and member0[20] == 0.8
    fig = evaluation.plot_rank_curves(curves, n_clips=50, split_name="test")
    assert len(fig.axes[0].get_legend().get_texts()) == 4  # one line per kind, and chance
    fig = evaluation.plot_by_kind(table, kinds, "test")
    assert len(fig.axes) == 4 and len(fig.legends[0].get_texts()) == 3  # a panel per metric, a legend entry per kind


def _multi_map_by_definition(similarity, relevant, k: int = 10) -> float:
    """Mean over captions of AP@k = sum over relevant clips ranked r <= k of (relevant clips in the top r) / r,
    divided by min(relevant clips, k); ties ranked against relevant clips. One caption at a time, no numpy tricks."""
    per_caption = []
    for scores, truly in zip(similarity.tolist(), relevant.tolist()):
        ranking = sorted(range(len(scores)), key=lambda clip: (-scores[clip], truly[clip]))[:k]
        hits, total = 0, 0.0
        for rank, clip in enumerate(ranking, start=1):
            if truly[clip]:
                hits += 1
                total += hits / rank
        per_caption.append(total / max(min(sum(truly), k), 1))
    return sum(per_caption) / len(per_caption)


def test_multi_map_by_definition_on_a_hand_checked_case():
    similarity = np.array([[0.9, 0.8, 0.1], [0.2, 0.3, 0.1]])
    relevant = np.array([[False, True, True], [True, False, False]])
    # caption 0: relevant at ranks 2 and 3 -> (1/2 + 2/3) / 2; caption 1: relevant at rank 2 -> (1/2) / 1
    assert _multi_map_by_definition(similarity, relevant) == pytest.approx(((1 / 2 + 2 / 3) / 2 + 1 / 2) / 2)


@pytest.mark.slow
def test_evaluate_profile_and_command_line(tiny_home, tiny_stage1, tmp_path, capsys, monkeypatch):
    data = data_sources.load_data_config("test")
    stage1.train_members(tiny_stage1.replace(members=2), data, progress=False)
    test = data_sources.load_splits(data, ("test",), progress=False)["test"]
    from salsa_lib.data import synth

    truth = synth.load_truth(data_sources.locate(data).root, "evaluation")
    queries = ["a dog barks", test.captions[1][2]]
    loaded = []
    monkeypatch.setattr(evaluation, "load_member", lambda path: loaded.append(path) or load_member(path))
    table, evaluations = evaluation.evaluate_profile("test", test, "test", 8, "cpu", truth, queries=queries)
    # one epoch: best and last were written after the same step, so each run is evaluated once
    assert [p.name for p in loaded] == ["best.ckpt"] * 2
    assert table.groupby("model")["mAP@10"].nunique().eq(1).all()
    written = pd.read_csv(tiny_home / "results/test/metrics.csv")
    # both weights of every run, each row saying which (the original tested the last epoch)
    assert list(written.model) == ["member0", "member0", "member1", "member1"]
    assert list(written.weights) == ["best", "last"] * 2
    assert set(evaluations) == {"member0 (best)", "member0 (last)", "member1 (best)", "member1 (last)"}
    assert written.checkpoint.str.endswith(("best.ckpt", "last.ckpt")).all()
    assert list(written.checkpoint.str.rsplit("/", n=1).str[-1]) == ["best.ckpt", "last.ckpt"] * 2
    assert written.selected_by.str.startswith(("best val mAP@10", "last epoch")).all()
    assert list(written.same_weights_as_best) == [False, True] * 2  # one epoch: last is best, and says so
    assert (written.split == "test").all()
    for column in ["mAP@10", "R@1", "R@5", "R@10", "A2T R@1", "multi mAP@10"]:
        assert written[column].between(0, 1).all()
    assert len(evaluations["member0 (best)"].ranks) == 20
    relevant = np.asarray(truth.todense()).T  # (captions, clips): every clip a caption truly describes
    for _, row in written.iterrows():
        similarity = evaluations[f"{row.model} ({row.weights})"].similarity
        assert row["multi mAP@10"] == pytest.approx(_multi_map_by_definition(similarity, relevant), abs=1e-6)
    scores = evaluations["member0 (last)"].query_similarity
    assert scores.shape == (2, 4)  # the free-text query equal to a caption scores like that caption
    assert np.allclose(scores[1], evaluations["member0 (last)"].similarity[7], atol=1e-5)

    checkpoint = runs.member_dir("test", 0) / "checkpoints" / "best.ckpt"
    out = tmp_path / "m.json"
    argv = ["--checkpoint", str(checkpoint), "--data-root", str(data_sources.locate(data).root), "--json", str(out)]
    assert evaluation.main(argv) == 0
    result = json.loads(out.read_text())
    assert result["clips"] == 4 and result["mAP@10"] == pytest.approx(written.loc[0, "mAP@10"])
    assert evaluation.main(["--checkpoint", str(tmp_path / "nope.ckpt"), "--data-root", str(tmp_path)]) == 1
    assert "does not exist" in capsys.readouterr().err

    # weights written after different steps are evaluated apart
    monkeypatch.setattr(evaluation, "saved_step", lambda path: hash(path.name))
    loaded.clear()
    apart, _ = evaluation.evaluate_profile("test", test, "test", 8, "cpu", truth)
    assert [p.name for p in loaded] == ["best.ckpt", "last.ckpt"] * 2
    assert not apart.same_weights_as_best.any()


def test_nan_embeddings_are_refused_naming_model_split_and_clip(tiny_home, tiny_stage1):
    """An overflowed clip must stop the evaluation, never give a NaN rank (0th: an infinite mAP@10)."""
    from salsa_lib.core.model import build_dual_encoder

    test = data_sources.load_splits(data_sources.load_data_config("test"), ("test",), progress=False)["test"]
    torch.manual_seed(0)
    model = build_dual_encoder(tiny_stage1)
    embed_audio = model.embed_audio

    def overflowing(audio, lengths, **kwargs):
        out = embed_audio(audio, lengths, **kwargs)
        return torch.cat([out[:1], torch.full_like(out[1:2], float("nan")), out[2:]])

    assert np.isfinite(evaluation.evaluate(model, test, 1.0, 8, name="member0 (best)").metrics["mAP@10"])
    model.embed_audio = overflowing
    with pytest.raises(NonFiniteError) as err:
        evaluation.evaluate(model, test, 1.0, 8, name="member0 (best)")
    assert f"audio embeddings of member0 (best) on split {test.split!r}: 1 of 4 rows" in str(err.value)
    assert test.file_names[1] in str(err.value)


def test_paper_comparison_uses_last_epoch_rows():
    rows = [{"stage": 1, "model": "member0", "weights": "best", "mAP@10": 0.30},
            {"stage": 1, "model": "member0", "weights": "last", "mAP@10": 0.28},
            {"stage": 2, "model": "self_from_member0", "weights": "best", "mAP@10": 0.32},
            {"stage": 2, "model": "self_from_member0", "weights": "last", "mAP@10": 0.31},
            {"stage": 2, "model": "ensemble_from_member0", "weights": "last", "mAP@10": 0.50}]
    table = pd.DataFrame([{**r, "R@1": 0.1, "R@5": 0.2, "R@10": 0.3} for r in rows])
    out = evaluation.paper_comparison(table).set_index("our weights", append=True)
    assert list(out["mAP@10 paper"]) == [40.11, 28.20, 29.94]
    assert out["mAP@10 ours"].iloc[1] == 28.0 and out["mAP@10 ours"].iloc[2] == 31.0  # last, self only
    assert np.isnan(out["mAP@10 ours"].iloc[0]) and list(out["our runs"]) == [0, 1, 1]


def test_the_example_model_is_chosen_on_validation_among_the_salsa_students(tmp_path, monkeypatch):
    """Never the test split's best, never a truth-taught ceiling: the ensemble or self student with the
    highest validation mAP@10 of the latest grid; without one, the best stage-1 member on validation."""
    monkeypatch.setenv("SALSA_HOME", str(tmp_path))
    stage1, stage2 = runs.stage1_dir("p"), runs.stage2_dir("p")
    val = {"member0": 0.30, "member1": 0.20, "truth_from_member0": 0.90, "ensemble_from_member0": 0.21,
           "ensemble_from_member1": 0.25, "self_from_member0": 0.24, "ensemble_from_member9": 0.99}
    grid = []
    for model, v in val.items():
        folder = (stage1 if model.startswith("member") else stage2) / model
        folder.mkdir(parents=True)
        kind, _, member = model.partition("_from_member")
        run = {"teachers": kind, "init_member": int(member or 0), "sup_weight": 0.0, "distill_weight": 1.0}
        (folder / "run.json").write_text(json.dumps({"run": run, "val": {"mAP@10": v}}))
        if not model.startswith("member") and model != "ensemble_from_member9":  # member9's: an earlier grid
            grid.append({"model": model, **run})
    (stage2 / "grid.json").write_text(json.dumps({"runs": grid}))
    models = list(val)
    table = pd.DataFrame({"stage": [1 if m.startswith("member") else 2 for m in models], "model": models,
                          "mAP@10": [0.1, 0.1, 0.9, 0.1, 0.1, 0.5, 0.9]})  # test mAP@10 must not matter
    chosen = evaluation.example_model("p", table)
    assert (chosen["model"], chosen["kind"], chosen["val mAP@10"]) == ("ensemble_from_member1", "ensemble", 0.25)
    members_only = evaluation.example_model("p", table[table.stage == 1])
    assert members_only["model"] == "member0" and "no SALSA student" in members_only["chosen as"]
