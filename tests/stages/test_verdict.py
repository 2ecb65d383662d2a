"""The verdict table: oracle ceiling against enumeration, paired differences computed from files."""

import itertools
import json

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from scipy import stats

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
    # the 95 % paired t interval, against scipy's one-sample t test of the differences
    low, high = verdict.ci_columns("mAP@10", "control")
    expected = stats.ttest_1samp(diff, 0.0).confidence_interval(0.95)
    assert (best.loc["ensemble", low], best.loc["ensemble", high]) == pytest.approx((expected.low, expected.high))
    assert "paired t" in low and "95%" in high
    multi_low, _ = verdict.ci_columns("multi mAP@10", "stage 1")
    multi = np.subtract(np.multiply(2, values["ensemble"]), np.add((0.30, 0.20, 0.25), 0.1))
    assert best.loc["ensemble", multi_low] == pytest.approx(stats.ttest_1samp(multi, 0.0).confidence_interval().low)
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


def test_students_that_share_one_member_are_paired_by_seed_and_each_against_that_member(tmp_path):
    """The default run: one member of the students' architecture, three students per kind from it."""
    results = tmp_path / "results"
    values = {"control": (0.32, 0.22, 0.26), "self": (0.35, 0.21, 0.30)}
    rows = [{"stage": 1, "model": "member0", "mAP@10": 0.25, "multi mAP@10": 0.3, "weights": "best"}]
    kinds = {}
    for kind, per_student in values.items():
        for k, v in enumerate(per_student):
            model = f"{kind}_from_member0" + (f"_student{k}" if k else "")
            rows.append({"stage": 2, "model": model, "mAP@10": v, "multi mAP@10": v, "weights": "best"})
            kinds[model] = (kind, k)
    results.mkdir(parents=True)
    pd.DataFrame(rows).to_csv(results / "metrics.csv", index=False)
    grid = []
    for model, (kind, k) in kinds.items():
        run = {**_run(kind, 0), "student": k}
        (results / "stage2" / model).mkdir(parents=True)
        (results / "stage2" / model / "run.json").write_text(json.dumps({"run": run}))
        grid.append({"model": model, **run})
    (results / "stage2" / "grid.json").write_text(json.dumps({"runs": grid}))

    seeds = verdict.per_seed_from_files(results)
    assert sorted(seeds[seeds.kind == "self"].student) == [0, 1, 2]
    assert set(seeds[seeds.kind == "self"].init_member) == {0}
    best = verdict.verdict_from_files(results, TRUTH_5).set_index("system")
    assert best.loc["i = j (stage 1)", "seeds"] == 1 and best.loc["self", "seeds"] == 3
    # every student against the one member it started from, and against the control of its own seed
    assert best.loc["self", "mAP@10 Δ stage 1 mean"] == pytest.approx(np.mean(values["self"]) - 0.25)
    assert best.loc["self", "mAP@10 Δ stage 1 wins"] == "2/3"
    diff = np.subtract(values["self"], values["control"])
    assert best.loc["self", "mAP@10 Δ control mean"] == pytest.approx(diff.mean())
    assert best.loc["self", "mAP@10 Δ control std"] == pytest.approx(diff.std(ddof=1))
    deltas = verdict.paired_differences(seeds).set_index(["kind", "reference", "student"]).delta
    assert deltas["self", "stage 1", 2] == pytest.approx(0.30 - 0.25)
    assert deltas["control", "stage 1", 1] == pytest.approx(0.22 - 0.25)


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
    table = verdict.verdict_from_files(tmp_path / "results", TRUTH_5)
    words = verdict.in_words(table)
    best, last, scale, conclusion = words.split("\n\n")
    assert best.startswith("**Best-validation weights") and last.startswith("**Last-epoch weights")
    assert "paper reports" not in words  # the README does not say which weights it reports (method §10.1)
    # ensemble - control per student: +0.03, -0.01, +0.04 -> mean 2.00, sample std 2.65, t(0.975, 2) = 4.30:
    # the interval [-4.57, +8.57] holds zero; ensemble - member: +0.05, +0.01, +0.05 -> [-2.07, +9.40]
    assert ("- ensemble: n = 3. On mAP@10, 28.67 ± 7.09 %; against the member it started from +3.67 ± 2.31 points, "
            "95 % CI [−2.07, +9.40], 3 of 3 students ahead (not told from zero); against the control +2.00 ± 2.65 "
            "points, 95 % CI [−4.57, +8.57], 2 of 3 students ahead (not told from zero).") in best
    # multi mAP@10 (2 x mAP@10 here) is said the same way: its differences, intervals and calls
    # (members' multi = mAP@10 + 0.1): ensemble - member +0.30, +0.12, +0.25 -> 22.33 ± 9.29, [−0.75, +45.41]
    assert ("On multi mAP@10, 57.33 ± 14.19 %; against the member it started from +22.33 ± 9.29 points, "
            "95 % CI [−0.75, +45.41], 3 of 3 students ahead (not told from zero); against the "
            "control +4.00 ± 5.29 points, 95 % CI [−9.14, +17.14], 2 of 3 students ahead (not told from zero).") in best
    # last weights: every model + 0.05, the initial member always its best weights: the same spread, shifted
    # by 5 points, so the difference to the member is now told from zero
    assert ("- ensemble: n = 3. On mAP@10, 33.67 ± 7.09 %; against the member it started from +8.67 ± 2.31 points, "
            "95 % CI [+2.93, +14.40], 3 of 3 students ahead (a gain, its interval above zero)") in last
    assert "- i = j (stage 1): n = 3. On mAP@10, 25.00 ± 5.00 %. On multi mAP@10, 35.00 ± 5.00 %." in best
    assert "within one std" not in words
    assert scale.startswith("For scale: chance ")
    assert conclusion == verdict.conclusion(table)


def test_a_difference_is_a_finding_only_when_its_interval_excludes_zero():
    def table(deltas, wins="3/3", multi=(0.0, 0.01)):
        mean, std = deltas
        row = {"system": "ensemble", "weights": "best", "seeds": 3, "mAP@10 mean": 0.3, "mAP@10 std": 0.01,
               "multi mAP@10 mean": 0.3, "multi mAP@10 std": 0.01}
        for metric, (m, s) in (("mAP@10", (mean, std)), ("multi mAP@10", multi)):
            for reference in ("stage 1", "control"):
                row.update({f"{metric} Δ {reference} mean": m, f"{metric} Δ {reference} std": s,
                            f"{metric} Δ {reference} wins": wins})
        return pd.DataFrame([row])  # stored aggregates: no interval columns, computed from mean, std and n

    half = stats.t.ppf(0.975, 2) * 0.01 / np.sqrt(3)  # 2.48 points with n = 3 and std 1 point
    assert 0.024 < half < 0.03
    ahead = verdict.in_words(table((0.03, 0.01)))  # mean 3 points > half: the interval lies above zero
    assert "+3.00 ± 1.00 points, 95 % CI [+0.52, +5.48]" in ahead and "(a gain, its interval above zero)" in ahead
    assert ("compared with training longer (the control): ensemble helps on mAP@10 and cannot be told apart on "
            "multi mAP@10.") in ahead
    inside = verdict.in_words(table((0.024, 0.01)))  # mean 2.4 points < half: the interval holds zero
    assert "95 % CI [−0.08, +4.88]" in inside and "a gain" not in inside
    assert "cannot tell whether distilling estimated correspondences helps beyond training longer" in inside
    behind = verdict.conclusion(table((0.0, 0.01), multi=(-0.03, 0.01)))
    assert "ensemble behind on multi mAP@10" in behind and "(the control): ensemble cannot be told apart on mAP@10" not in behind
    assert ("compared with training longer (the control): ensemble does worse on multi mAP@10 and cannot be told "
            "apart on mAP@10.") in behind
    single = verdict.in_words(table((0.02, np.nan), wins="1/1"))  # one student: no spread, no interval
    assert "+2.00 points, 95 % CI n/a, 1 of 1 students ahead (no interval with one student)" in single
    assert verdict.compact(table((0.02, np.nan), wins="1/1")).loc[0, "Δ control"] == "+2.00 [n/a] (1/1)"
    with pytest.raises(ValueError, match=r"verdict row 'ensemble' \(best\): wins 'three' is not 'ahead/n'"):
        verdict.in_words(table((0.02, 0.01), wins="three"))


def test_intervals_from_stored_aggregates_equal_those_from_the_students(tmp_path):
    """The README's run stores mean, std and wins only: the intervals computed from them are the table's."""
    values = {"control": (0.32, 0.22, 0.26), "ensemble": (0.35, 0.21, 0.30), "truth": (0.36, 0.25, 0.31)}
    rows, kinds = _grid_rows(values, last_offset=0.05)
    _write_results(tmp_path / "results", rows, kinds)
    table = verdict.verdict_from_files(tmp_path / "results", TRUTH_5)
    intervals = [c for c in table if "95% CI" in c]
    assert len(intervals) == 2 * 2 * 2  # two metrics, two references, low and high
    stored = table.drop(columns=intervals).astype(object).where(table.drop(columns=intervals).notna(), None)
    rebuilt = verdict.with_intervals(pd.DataFrame(stored.to_dict("records")))
    pd.testing.assert_frame_equal(rebuilt[intervals].astype(float), table[intervals], check_exact=False)
    assert verdict.in_words(pd.DataFrame(stored.to_dict("records"))) == verdict.in_words(table)
    assert verdict.compact(pd.DataFrame(stored.to_dict("records"))).equals(verdict.compact(table))


def test_the_conclusion_answers_against_stage_1_and_the_control_on_both_metrics(tmp_path):
    values = {"control": (0.32, 0.22, 0.26), "ensemble": (0.35, 0.21, 0.30), "truth": (0.36, 0.25, 0.31)}
    rows, kinds = _grid_rows(values, last_offset=0.05)
    _write_results(tmp_path / "results", rows, kinds)
    conclusion = verdict.conclusion(verdict.verdict_from_files(tmp_path / "results", TRUTH_5))
    assert conclusion.startswith("**Conclusion** (best-validation weights, n = 3 paired students per kind")
    # truth - control: +0.04, +0.03, +0.05 -> [+1.52, +6.48]; ensemble - control holds zero
    assert ("Against the control (the same second training on L_sup alone), in points with 95 % CI: on mAP@10 "
            "ensemble +2.00 [−4.57, +8.57], truth +4.00 [+1.52, +6.48]; on multi mAP@10 ensemble +4.00 [−9.14, +17.14], "
            "truth +8.00 [+3.03, +12.97]; told from zero: truth ahead on mAP@10 and truth ahead on multi mAP@10.") in conclusion
    assert "Against the member each student started from, in points with 95 % CI: on mAP@10 control +1.67" in conclusion
    # the truth is no estimate: the question is answered from the ensemble alone
    assert ("So this run cannot tell whether distilling estimated correspondences helps beyond training longer: "
            "against the control every interval of ensemble includes zero, on both metrics.") in conclusion
    assert conclusion.endswith("With the last-epoch weights the calls differ: ensemble against the member it started "
                               "from on mAP@10 is a gain, its interval above zero.")


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
    left, left_labels, middle, middle_labels, right, right_labels = fig.axes
    from matplotlib.collections import PathCollection

    def hollow(ax):  # the points drawn by scatter: one per seed or student
        return sum(len(c.get_offsets()) for c in ax.collections if isinstance(c, PathCollection))

    def error_bars(ax):  # (x from, x to) of every horizontal error bar, bottom to top of the drawing order
        return [tuple(sorted((seg[0][0], seg[1][0]))) for container in ax.containers
                for collection in container.lines[2] for seg in collection.get_segments()]

    assert hollow(left) == 4 * 2 * 3  # every seed of 4 systems, both weights
    assert hollow(middle) == 3 * 2 * 3 and hollow(right) == 2 * 2 * 3  # stage 1 and the control have no Δ to themselves
    assert [t.get_text() for t in left.get_yticklabels()] == ["i = j (stage 1)", "control", "ensemble", "truth"]
    # the error bars are the table's 95 % paired t intervals, in points
    low, high = verdict.ci_columns("mAP@10", "control")
    expected = sorted((100 * by_row.loc[key, low], 100 * by_row.loc[key, high])
                      for key in [("ensemble", "best"), ("ensemble", "last"), ("truth", "best"), ("truth", "last")])
    assert np.allclose(sorted(error_bars(right)), expected)
    ensemble = 100 * np.array([0.35, 0.21, 0.30])  # left: the t interval of each system's mean over its seeds
    interval = stats.ttest_1samp(ensemble, 0.0).confidence_interval()
    assert np.allclose(error_bars(left)[4], (interval.low, interval.high))  # 3rd system, best weights
    # the labels stand beside the panels, outside the data: no number is written inside a panel
    assert all(not any(ch.isdigit() for ch in t.get_text()) for ax in (left, middle, right) for t in ax.texts)
    assert any(t.get_text() == f"{interval.low + (interval.high - interval.low) / 2:.2f} "
               f"[+{interval.low:.2f}, +{interval.high:.2f}]" for t in left_labels.texts)
    assert any(t.get_text().endswith("3/3 ahead") for t in middle_labels.texts)
    assert len(right_labels.texts) == 2 * 2 and not any(ax.axison for ax in (left_labels, middle_labels, right_labels))
    lo, hi = left.get_xlim()
    assert lo > 5 and hi < 80  # the range where the systems and their intervals lie, not 0 to the oracle's 100
    drawn = [x for ax_x in error_bars(left) for x in ax_x]
    assert hi - max(drawn) < 0.1 * (hi - lo) and min(drawn) - lo < 0.1 * (hi - lo)  # the data uses the width
    chance = f"chance {100 * metrics.chance_map_at_k(5):.2f} %"
    assert chance in left.get_title() and "oracle ranking 100.00 %" in left.get_title()
    assert middle.get_xlim()[0] < 0 < middle.get_xlim()[1]  # the zero line is in view
    assert middle.get_xlim() == right.get_xlim()  # one scale for both differences


def test_compact_verdict_reads_like_the_readme_table(tmp_path):
    values = {"control": (0.32, 0.22, 0.26), "ensemble": (0.35, 0.21, 0.30)}
    rows, kinds = _grid_rows(values)
    _write_results(tmp_path / "results", rows, kinds)
    _quality(tmp_path / "results")
    compact = verdict.compact(verdict.verdict_from_files(tmp_path / "results", TRUTH_5)).set_index(["system", "weights"])
    assert list(compact.columns) == ["seeds", "mAP@10 (%)", "Δ stage 1", "Δ control", "multi mAP@10 (%)",
                                     "multi Δ stage 1", "multi Δ control", "estimate ROC-AUC / AP (%)"]
    row = compact.loc[("ensemble", "best")]
    # mean ± sample std [95 % paired t interval] (students ahead), in points
    assert row["mAP@10 (%)"] == "28.67 ± 7.09" and row["Δ stage 1"] == "+3.67 ± 2.31 [−2.07, +9.40] (3/3)"
    assert row["Δ control"] == "+2.00 ± 2.65 [−4.57, +8.57] (2/3)" and row["estimate ROC-AUC / AP (%)"] == "95.00 / 60.00"
    assert row["multi Δ control"] == "+4.00 ± 5.29 [−9.14, +17.14] (2/3)"  # multi = 2 x mAP@10 here
    assert row["multi Δ stage 1"] == "+22.33 ± 9.29 [−0.75, +45.41] (3/3)"
    stage1 = compact.loc[("i = j (stage 1)", "best")]
    assert (stage1[["Δ stage 1", "Δ control", "multi Δ stage 1", "multi Δ control"]] == "").all()  # the reference
    assert compact.loc[("chance", ""), "seeds"] == "" and compact.loc[("oracle ranking", ""), "multi mAP@10 (%)"] == "100.00"
    assert compact.loc[("control", "best"), "Δ stage 1"] == "+1.67 ± 0.58 [+0.23, +3.10] (3/3)"


def _members(results, families):
    """A stage-1 folder listing one member per entry of ``families`` (its audio encoder)."""
    stage1 = results / "stage1"
    for k, family in enumerate(families):
        (stage1 / f"member{k}").mkdir(parents=True)
        (stage1 / f"member{k}" / "run.json").write_text(json.dumps({"run": {"audio_encoder": family}}))
    (stage1 / "members.json").write_text(json.dumps({"members": [f"member{k}" for k in range(len(families))]}))


def test_members_of_another_family_teach_but_are_no_stage_1_row(tmp_path):
    """The stage-1 row is the students' architecture: a MobileNet member (no student starts from it)
    would pull its mean and std toward another model; it keeps a kind of its own elsewhere."""
    values = {"control": (0.32, 0.22, 0.26), "mixed": (0.35, 0.21, 0.30)}
    rows, kinds = _grid_rows(values)
    rows += [{"stage": 1, "model": "member3", "mAP@10": 0.05, "multi mAP@10": 0.07, "weights": w} for w in ("best", "last")]
    results = tmp_path / "results"
    _write_results(results, rows, kinds)
    _members(results, ["passt_small"] * 3 + ["mobilenet_small"])
    assert verdict.member_kinds(results / "stage1") == {
        "member0": "i = j (stage 1)", "member1": "i = j (stage 1)", "member2": "i = j (stage 1)",
        "member3": "i = j (mobilenet_small)"}
    seeds = verdict.per_seed_from_files(results)
    assert "member3" not in set(seeds.model)
    table = verdict.verdict_from_files(results, TRUTH_5).set_index(["system", "weights"])
    assert table.loc[("i = j (stage 1)", "best"), "seeds"] == 3
    assert table.loc[("i = j (stage 1)", "best"), "mAP@10 mean"] == pytest.approx(0.25)
    # without the listing (an older results folder) every member is the stage-1 kind, as before
    (results / "stage1" / "members.json").unlink()
    assert "member3" in set(verdict.per_seed_from_files(results).model)
