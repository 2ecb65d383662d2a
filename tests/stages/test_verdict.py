"""The verdict table: oracle ceiling against enumeration, paired differences computed from files."""

import itertools
import json

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from salsa_lib.core import metrics
from salsa_lib.errors import DataError
from salsa_lib.stages import verdict


def test_oracle_map_matches_an_enumeration_of_the_oracle_orders():
    truth = np.zeros((4, 8), dtype=bool)  # 4 clips, captions 2c and 2c + 1 belong to clip c
    truth[np.arange(8) // 2, np.arange(8)] = True
    truth[1, 0] = truth[2, 0] = True  # caption 0 truly describes clips 0, 1, 2
    truth[3, 5] = True  # caption 5 truly describes clips 2 and 3
    expected = []
    for caption in range(8):
        relevant = np.flatnonzero(truth[:, caption])
        rr = [1 / (order.index(caption // 2) + 1) for order in map(list, itertools.permutations(relevant))]
        expected.append(np.mean(rr))  # every order of the true clips is equally likely
    assert verdict.oracle_map_at_k(sp.csr_matrix(truth)) == pytest.approx(np.mean(expected))
    # truncation at k: with 12 true clips the own one beyond rank 3 scores 0
    many = np.ones((12, 1), dtype=bool)
    assert verdict.oracle_map_at_k(many, k=3) == pytest.approx(sum(1 / r for r in (1, 2, 3)) / 12)


def _run(kind, student):
    return {"teachers": kind, "init_member": student, "sup_weight": 1.0 if kind == "control" else 0.0,
            "distill_weight": 0.0 if kind == "control" else 1.0}


def _write_results(folder, rows, kinds, stale=()):
    """metrics.csv, the grid listing of ``kinds`` and a run record for each; ``stale``: folders of an
    earlier grid (recorded and scored, but not listed)."""
    folder.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(folder / "metrics.csv", index=False)
    for model, (kind, student) in [*kinds.items(), *stale]:
        (folder / "stage2" / model).mkdir(parents=True)
        (folder / "stage2" / model / "run.json").write_text(json.dumps({"run": _run(kind, student)}))
    grid = [{"model": model, **_run(kind, student)} for model, (kind, student) in kinds.items()]
    (folder / "stage2" / "grid.json").write_text(json.dumps({"runs": grid}))


def _grid_rows(values, last_offset=0.0):
    """metrics.csv rows of 3 members and 3 students per kind in ``values``; last weights = best + offset."""
    rows = [{"stage": 1, "model": f"member{k}", "mAP@10": v, "multi mAP@10": v + 0.1}
            for k, v in enumerate((0.30, 0.20, 0.25))]
    kinds = {}
    for kind, per_student in values.items():
        for k, v in enumerate(per_student):
            rows.append({"stage": 2, "model": f"{kind}_from_member{k}", "mAP@10": v, "multi mAP@10": 2 * v})
            kinds[f"{kind}_from_member{k}"] = (kind, k)
    rows = [{**row, "weights": "best"} for row in rows]
    rows += [{**row, "weights": "last", "mAP@10": row["mAP@10"] + last_offset} for row in rows]
    return rows, kinds


def _quality(results):
    (results / "tables").mkdir()
    pd.DataFrame({"estimate": ["i = j (stage-1 assumption)", "member0", "member1", "member2", "ensemble"],
                  "ROC-AUC": [0.6, 0.8, 0.7, 0.9, 0.95], "AP": [0.2, 0.4, 0.3, 0.5, 0.6]}).to_csv(
        results / "tables" / "correspondence_quality.csv", index=False)


TRUTH_5 = sp.csr_matrix(np.repeat(np.eye(5, dtype=bool), 5, axis=1))  # test split: 5 clips, only own captions


def test_paired_table_from_files(tmp_path):
    values = {"control": (0.32, 0.22, 0.26), "ensemble": (0.35, 0.21, 0.30)}
    rows, kinds = _grid_rows(values, last_offset=0.05)
    _write_results(tmp_path / "results", rows[::-1], kinds)  # file order must not matter
    _quality(tmp_path / "results")
    table = verdict.verdict_from_files(tmp_path / "results", TRUTH_5)
    best = table[table.weights.isin(["best", ""])].set_index("system")
    last = table[table.weights == "last"].set_index("system")

    assert list(best.index) == ["chance", "i = j (stage 1)", "control", "ensemble", "oracle ranking"]
    assert list(last.index) == ["i = j (stage 1)", "control", "ensemble"]
    assert best.loc["chance", "mAP@10 mean"] == pytest.approx(metrics.chance_map_at_k(5))
    assert best.loc["oracle ranking", "mAP@10 mean"] == pytest.approx(1.0)  # one true clip per caption
    diff = np.subtract(values["ensemble"], values["control"])
    assert best.loc["ensemble", "mAP@10 mean"] == pytest.approx(np.mean(values["ensemble"]))
    assert best.loc["ensemble", "mAP@10 std"] == pytest.approx(np.std(values["ensemble"], ddof=1))
    assert best.loc["ensemble", "mAP@10 Δ control mean"] == pytest.approx(diff.mean())
    assert best.loc["ensemble", "mAP@10 Δ control std"] == pytest.approx(diff.std(ddof=1))
    assert best.loc["ensemble", "mAP@10 Δ control wins"] == "2/3"
    assert best.loc["ensemble", "multi mAP@10 Δ control mean"] == pytest.approx(2 * diff.mean())
    # the paired difference to the initial member: its best weights, where the student started
    from_member = np.subtract(values["ensemble"], (0.30, 0.20, 0.25))
    assert best.loc["ensemble", "mAP@10 Δ stage 1 mean"] == pytest.approx(from_member.mean())
    assert best.loc["ensemble", "mAP@10 Δ stage 1 wins"] == "3/3"
    assert last.loc["ensemble", "mAP@10 Δ stage 1 mean"] == pytest.approx(from_member.mean() + 0.05)
    assert last.loc["ensemble", "mAP@10 mean"] == pytest.approx(np.mean(values["ensemble"]) + 0.05)
    assert last.loc["ensemble", "mAP@10 Δ control mean"] == pytest.approx(diff.mean())  # last vs last
    assert last.loc["i = j (stage 1)", "mAP@10 mean"] == pytest.approx(0.25 + 0.05)
    assert best.loc["i = j (stage 1)", "seeds"] == 3 and pd.isna(best.loc["control", "mAP@10 Δ control mean"])
    assert pd.isna(best.loc["i = j (stage 1)", "mAP@10 Δ stage 1 mean"])
    assert best.loc["ensemble", "estimate AP"] == 0.6
    assert best.loc["i = j (stage 1)", "estimate ROC-AUC"] == 0.6
    assert pd.isna(best.loc["control", "estimate AP"])


def test_runs_outside_the_latest_grid_never_join_a_row(tmp_path):
    values = {"control": (0.32, 0.22, 0.26), "ensemble": (0.35, 0.21, 0.30)}
    rows, kinds = _grid_rows(values)
    stale = [("ensemble_from_member0_sup1_dist1", ("ensemble", 0)), ("ensemble_from_member3", ("ensemble", 3))]
    rows += [{"stage": 2, "model": model, "mAP@10": 0.9, "multi mAP@10": 0.9, "weights": "best"} for model, _ in stale]
    _write_results(tmp_path / "results", rows, kinds, stale=stale)
    table = verdict.verdict_from_files(tmp_path / "results", TRUTH_5).set_index(["system", "weights"])
    assert table.loc[("ensemble", "best"), "seeds"] == 3
    assert table.loc[("ensemble", "best"), "mAP@10 mean"] == pytest.approx(np.mean(values["ensemble"]))


def test_a_grid_run_that_was_not_scored_or_records_other_weights_is_refused(tmp_path):
    rows, kinds = _grid_rows({"control": (0.3, 0.2, 0.2), "ensemble": (0.3, 0.2, 0.2)})
    _write_results(tmp_path / "a", [r for r in rows if r["model"] != "ensemble_from_member2"], kinds)
    with pytest.raises(ValueError, match="ensemble_from_member2"):
        verdict.verdict_from_files(tmp_path / "a", TRUTH_5)
    _write_results(tmp_path / "b", rows, kinds)
    record = tmp_path / "b" / "stage2" / "ensemble_from_member1" / "run.json"
    record.write_text(json.dumps({"run": {**_run("ensemble", 1), "sup_weight": 1.0}}))
    with pytest.raises(DataError, match="ensemble_from_member1"):
        verdict.verdict_from_files(tmp_path / "b", TRUTH_5)


def test_a_kind_is_paired_only_with_the_control_of_the_same_student():
    seeds = pd.DataFrame({"kind": ["control", "control", "truth"], "student": [0, 1, 1], "model": ["a", "b", "c"],
                          "mAP@10": [0.1, 0.5, 0.6], "multi mAP@10": [0.1, 0.5, 0.6]})
    table = verdict.paired_table(seeds, {}, {}).set_index("system")
    assert table.loc["truth", "mAP@10 Δ control mean"] == pytest.approx(0.1)  # 0.6 - 0.5, not - 0.1
    assert table.loc["truth", "mAP@10 Δ control wins"] == "1/1"


def test_verdict_in_words_says_what_the_table_holds(tmp_path):
    values = {"control": (0.32, 0.22, 0.26), "ensemble": (0.35, 0.21, 0.30)}
    rows, kinds = _grid_rows(values, last_offset=0.05)
    _write_results(tmp_path / "results", rows, kinds)
    _quality(tmp_path / "results")
    words = verdict.in_words(verdict.verdict_from_files(tmp_path / "results", TRUTH_5))
    best, last, scale = words.split("\n\n")
    assert best.startswith("**Best-validation weights") and last.startswith("**Last-epoch weights")
    # ensemble - control per student: +0.03, -0.01, +0.04 -> mean 2.00, sample std 2.65; 2 of 3 ahead
    assert ("- ensemble: 28.67 ± 7.09 % (n = 3); against the member it started from +3.67 ± 2.31 points, "
            "3 of 3 students ahead; against the control +2.00 ± 2.65 points (within one std of zero), "
            "2 of 3 students ahead.") in best
    # last weights: every model + 0.05; the initial member is always its best weights
    assert "- control: 31.67 ± 5.03 % (n = 3); against the member it started from +6.67 ± 0.58 points" in last
    assert scale.startswith("For scale: chance ")


def test_paired_differences_are_what_the_table_averages_and_the_figure_draws_every_seed(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    values = {"control": (0.32, 0.22, 0.26), "ensemble": (0.35, 0.21, 0.30), "truth": (0.36, 0.25, 0.31)}
    rows, kinds = _grid_rows(values, last_offset=0.05)
    _write_results(tmp_path / "results", rows, kinds)
    table = verdict.verdict_from_files(tmp_path / "results", TRUTH_5)
    seeds = verdict.per_seed_from_files(tmp_path / "results")
    differences = verdict.paired_differences(seeds)
    # no difference of stage 1 to anything, nor of the control to itself
    assert set(zip(differences.kind, differences.reference)) == {
        ("control", "stage 1"), ("ensemble", "stage 1"), ("ensemble", "control"), ("truth", "stage 1"), ("truth", "control")}
    by_row = table.set_index(["system", "weights"])
    for (kind, weights, reference), delta in differences.groupby(["kind", "weights", "reference"]).delta:
        assert len(delta) == 3
        assert delta.mean() == pytest.approx(by_row.loc[(kind, weights), f"mAP@10 Δ {reference} mean"])
        assert delta.std(ddof=1) == pytest.approx(by_row.loc[(kind, weights), f"mAP@10 Δ {reference} std"])
    student = differences.set_index(["kind", "weights", "reference", "student"]).delta
    assert student[("ensemble", "last", "stage 1", 1)] == pytest.approx(0.21 + 0.05 - 0.20)  # vs the member's best

    fig = verdict.plot_verdict(table, seeds)
    left, middle, right = fig.axes
    from matplotlib.collections import PathCollection

    def hollow(ax):  # the points drawn by scatter: one per seed or student
        return sum(len(c.get_offsets()) for c in ax.collections if isinstance(c, PathCollection))

    assert hollow(left) == 4 * 2 * 3  # every seed of 4 systems, both weights
    assert hollow(middle) == 3 * 2 * 3 and hollow(right) == 2 * 2 * 3  # stage 1 and the control have no Δ to themselves
    assert [t.get_text() for t in left.get_yticklabels()] == ["i = j (stage 1)", "control", "ensemble", "truth"]
    lo, hi = left.get_xlim()
    assert lo > 10 and hi < 80  # the range where the systems differ, not from 0 to the oracle's 100
    chance = f"chance {100 * metrics.chance_map_at_k(5):.1f} %"
    assert chance in left.get_title() and "oracle ranking 100.0 %" in left.get_title()
    assert middle.get_xlim()[0] < 0 < middle.get_xlim()[1]  # the zero line is in view


def test_compact_verdict_reads_like_the_readme_table(tmp_path):
    values = {"control": (0.32, 0.22, 0.26), "ensemble": (0.35, 0.21, 0.30)}
    rows, kinds = _grid_rows(values)
    _write_results(tmp_path / "results", rows, kinds)
    _quality(tmp_path / "results")
    compact = verdict.compact(verdict.verdict_from_files(tmp_path / "results", TRUTH_5)).set_index(["system", "weights"])
    row = compact.loc[("ensemble", "best")]
    assert row["mAP@10"] == "28.67 ± 7.09" and row["Δ stage 1"] == "+3.67 ± 2.31 (3/3)"
    assert row["Δ control"] == "+2.00 ± 2.65 (2/3)" and row["estimate ROC-AUC / AP"] == "0.950 / 0.600"
    stage1 = compact.loc[("i = j (stage 1)", "best")]
    assert stage1["Δ stage 1"] == "" and stage1["Δ control"] == ""  # the reference, not a result
    assert compact.loc[("chance", ""), "seeds"] == ""
    assert compact.loc[("control", "best"), "Δ stage 1"] == "+1.67 ± 0.58 (3/3)"
