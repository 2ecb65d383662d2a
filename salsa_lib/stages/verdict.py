"""The verdict of stage 2 with error bars: each teacher kind against the control, over paired seeds.

Student k of every kind starts from the same stage-1 member (member k, or member k mod the members
when there are fewer members than students) with the same seed, so a kind and the control differ only
in their loss; the paired difference (kind - control, per student) is the effect of the
targets, free of the effect of training longer. Each paired difference carries a 95 % paired t
interval, mean ± t_{0.975, n-1} · s / √n over the n students, and the words call a difference a
finding only when that interval excludes zero. Everything here is computed from files (metrics.csv,
the stage-2 run records, the correspondence-quality table, the truth matrix), so the table can be
rebuilt and checked without retraining.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from scipy import stats

from salsa_lib import runs
from salsa_lib.core import metrics

METRICS = ("mAP@10", "multi mAP@10")
# row order of the verdict table: floor, stage 1, control, the teachers, ceiling
ROWS = ("chance", "i = j (stage 1)", "control", "self", "ensemble", "mixed", "truth", "oracle ranking")
STAGE1 = ROWS[1]  # the stage-1 members: the kind trained on the i = j labels
# one colour per kind of model, the same in every figure of notebooks 03 and 04
KIND_COLORS = {STAGE1: "#7f7f7f", "control": "#e08214", "self": "#8073ac", "ensemble": "#2166ac",
               "mixed": "#67a9cf", "truth": "#1b9e77", "released": "#b2182b"}
KIND_ORDER = (STAGE1, "control", "self", "ensemble", "mixed", "truth")
WEIGHT_MARKERS = {"best": "o", "last": "s"}
WEIGHTS_LABELS = {"best": "best-validation weights", "last": "last-epoch weights"}
REFERENCES = ("stage 1", "control")  # what each paired difference is taken against
CONFIDENCE = 0.95  # two-sided level of the paired t intervals


def t_interval(mean: float, std: float, n) -> tuple[float, float]:
    """The paired t interval of a mean difference: mean ± t_{0.975, n-1} · std / √n (std with ddof 1).

    (nan, nan) for fewer than two students (no spread to estimate) or a missing mean or std.
    """
    if n is None or pd.isna(n) or int(n) < 2 or pd.isna(mean) or pd.isna(std):
        return np.nan, np.nan
    half = stats.t.ppf(0.5 + CONFIDENCE / 2, int(n) - 1) * std / np.sqrt(int(n))
    return mean - half, mean + half


def ci_columns(metric: str, reference: str) -> tuple[str, str]:
    """verdict.csv's column names of the interval of ``metric``'s difference to ``reference``."""
    return (f"{metric} Δ {reference} 95% CI low (paired t)", f"{metric} Δ {reference} 95% CI high (paired t)")


def oracle_map_at_k(truth, k: int = 10) -> float:
    """Expected single-relevance mAP@k of an oracle: a caption's true clips first, in random order.

    With m true clips (its own among them) the own clip lands uniformly on ranks 1..m, so the
    expected reciprocal rank truncated at k is (1/m) * sum_{r <= min(m, k)} 1/r. No model that
    only knows what the captions say can beat it on average.
    """
    matches = np.asarray(truth.sum(axis=0)).ravel()
    harmonic = np.concatenate([[0.0], np.cumsum(1.0 / np.arange(1, k + 1))])
    return float(np.mean(harmonic[np.minimum(matches, k)] / matches))


def stage2_kinds(stage2_dir: Path) -> pd.DataFrame:
    """model folder -> teacher kind, student and initial member, for exactly the runs of the latest grid."""
    rows = [{"model": model, "kind": kind, "student": student, "init_member": member}
            for model, (kind, student, member) in runs.stage2_grid(stage2_dir).items()]
    return pd.DataFrame(rows, columns=["model", "kind", "student", "init_member"])


def member_kinds(stage1_folder: Path) -> dict[str, str]:
    """Each listed stage-1 member's kind: ``i = j (stage 1)`` for the students' architecture (member0's:
    every student starts from a member of it), ``i = j (<audio encoder>)`` for a member of another
    family, which only teaches (the mixed ensemble) and so is no reference of a paired difference."""
    families = runs.audio_encoders_in(stage1_folder)
    own = families.get("member0")
    return {name: STAGE1 if family == own else f"i = j ({family})" for name, family in families.items()}


def per_seed(table: pd.DataFrame, stage2_dir: Path) -> pd.DataFrame:
    """metrics.csv rows as (kind, student, initial member, weights, metrics): the stage-1 members of the
    students' architecture are the ``i = j`` kind, student = initial member = member (members of other
    families are left out: no student starts from them); stage 2 is the latest grid, every run of which
    must have been scored."""
    if "weights" not in table:
        table = table.assign(weights="best")
    if table.duplicated(["model", "weights"]).any():
        twice = sorted(set(table.model[table.duplicated(["model", "weights"])]))
        raise ValueError(f"metrics.csv lists {twice} more than once per weights: cannot pair the seeds")
    kinds = member_kinds(Path(stage2_dir).parent / "stage1")
    stage1 = table[(table.stage.astype(str) == "1") & (table.model.map(lambda m: kinds.get(m, STAGE1)) == STAGE1)].assign(
        kind=STAGE1, student=lambda d: d.model.str.removeprefix("member").astype(int),
        init_member=lambda d: d.student)
    grid = stage2_kinds(stage2_dir)
    unscored = sorted(set(grid.model) - set(table.model))
    if unscored:
        raise ValueError(f"stage-2 run(s) {unscored} of the latest grid are not in metrics.csv: rerun notebook 04")
    stage2 = table[table.stage.astype(str) == "2"].merge(grid, on="model", how="inner")
    columns = ["kind", "student", "init_member", "weights", "model", *METRICS]
    return pd.concat([stage1, stage2])[columns].reset_index(drop=True)


def initial_of(group: pd.DataFrame, initial: pd.DataFrame) -> pd.DataFrame:
    """The initial stage-1 member's row for each student of ``group`` (both indexed by student; the
    members' student is their member number), so ``group - initial_of(...)`` pairs a student with the
    member it started from. Rows without ``init_member`` (tables from before it was stored) started
    from the member of their own number."""
    members = group["init_member"] if "init_member" in group else pd.Series(group.index, index=group.index)
    return initial.reindex(members.to_numpy()).set_axis(group.index)


def _paired(group: pd.DataFrame, reference: pd.DataFrame, metric: str, name: str) -> dict:
    """Mean, std (ddof 1), wins and 95 % paired t interval of ``group - reference``, student by student."""
    paired = group[metric] - reference[metric].reindex(group.index)
    n = int(paired.notna().sum())
    if n == 0:
        return {}
    mean, std = paired.mean(), paired.std(ddof=1)
    return {f"{metric} Δ {name} mean": mean, f"{metric} Δ {name} std": std,
            f"{metric} Δ {name} wins": f"{int((paired > 0).sum())}/{n}",
            **dict(zip(ci_columns(metric, name), t_interval(mean, std, n)))}


def _students(wins, where: str) -> float:
    """n of a paired difference from its wins cell ('2/3' -> 3); nan where there is no difference."""
    if wins is None or pd.isna(wins) or wins == "":
        return np.nan
    ahead, slash, n = str(wins).partition("/")
    if not slash or not ahead.isdigit() or not n.isdigit():
        raise ValueError(f"{where}: wins {wins!r} is not 'ahead/n' (e.g. '2/3')")
    return int(n)


def with_intervals(table: pd.DataFrame) -> pd.DataFrame:
    """``table`` with every paired difference's 95 % paired t interval, computed from its mean, std and
    n (the n of its wins) where the table has none: rows stored as aggregates (the README's run) get the
    same intervals as ``paired_table`` computes from the students."""
    table = table.copy()
    for metric in METRICS:
        for reference in REFERENCES:
            low, high = ci_columns(metric, reference)
            mean = f"{metric} Δ {reference} mean"
            if mean not in table or (low in table and high in table):
                continue
            bounds = [t_interval(row[mean], row.get(f"{metric} Δ {reference} std"),
                                 _students(row.get(f"{metric} Δ {reference} wins"),
                                           f"verdict row {row['system']!r} ({row.get('weights')})"))
                      for _, row in table.iterrows()]
            table[low], table[high] = [b[0] for b in bounds], [b[1] for b in bounds]
    return table


def paired_table(seeds: pd.DataFrame, chance: dict, oracle: dict, quality: dict | None = None) -> pd.DataFrame:
    """One row per kind and weights: mean and std (ddof 1) over students, and the paired differences
    to the control (same initial member, seed, epochs and weights) and to the initial stage-1 member
    (its best-validation weights: where the student started).

    ``chance`` and ``oracle`` map metric names to fixed values; ``quality`` maps a kind to the
    ROC-AUC and AP of its estimate of the training correspondences (absent: left empty).
    """
    if "weights" not in seeds:
        seeds = seeds.assign(weights="best")
    initial = seeds[(seeds.kind == "i = j (stage 1)") & (seeds.weights == "best")].set_index("student")
    rows = []
    for kind in ROWS:
        if kind in ("chance", "oracle ranking"):
            source = chance if kind == "chance" else oracle
            rows.append({"system": kind, "weights": "", "seeds": 0, **{f"{m} mean": source.get(m, np.nan) for m in METRICS}})
            continue
        for weights in [w for w in runs.WEIGHTS if w in set(seeds.weights)]:
            chosen = seeds[seeds.weights == weights]
            group = chosen[chosen.kind == kind].set_index("student").sort_index()
            if group.empty:
                continue
            control = chosen[chosen.kind == "control"].set_index("student")
            row = {"system": kind, "weights": weights, "seeds": len(group)}
            for m in METRICS:
                row[f"{m} mean"], row[f"{m} std"] = group[m].mean(), group[m].std(ddof=1)
                if kind != "control":
                    row.update(_paired(group, control, m, "control"))
                if kind != "i = j (stage 1)":
                    row.update(_paired(group, initial_of(group, initial), m, "stage 1"))
            row.update((quality or {}).get(kind, {}))
            rows.append(row)
    return pd.DataFrame(rows)


def estimate_quality_by_kind(quality: pd.DataFrame) -> dict:
    """The correspondence-quality table (notebook 02) keyed by teacher kind: what each kind distils."""
    by_name = quality.set_index("estimate")[["ROC-AUC", "AP"]]
    members = by_name[by_name.index.str.fullmatch(r"member\d+")]
    if "audio encoder" in quality:  # self students start from members of member0's family only
        family = quality.set_index("estimate")["audio encoder"]
        members = members[family.reindex(members.index) == family.get("member0")]
    out = {}
    truth = [name for name in by_name.index if name.startswith("truth")]
    if truth:
        out["truth"] = by_name.loc[truth[0]].to_dict()
    for kind in runs.ENSEMBLE_KINDS:
        if kind in by_name.index:
            out[kind] = by_name.loc[kind].to_dict()
    if len(members):
        out["self"] = members.mean().to_dict()  # each self student distils its own member's estimate
    identity = [name for name in by_name.index if name.startswith("i = j")]
    if identity:
        out["i = j (stage 1)"] = by_name.loc[identity[0]].to_dict()
    return {kind: {f"estimate {k}": v for k, v in values.items()} for kind, values in out.items()}


def verdict_from_files(results: Path, truth) -> pd.DataFrame:
    """The paired-seed table of a profile's results folder and the test split's truth matrix."""
    results = Path(results)
    table = pd.read_csv(results / "metrics.csv")
    seeds = per_seed(table, results / "stage2")
    n_clips = truth.shape[0]
    matches = np.asarray(truth.sum(axis=0)).ravel()
    chance = {"mAP@10": metrics.chance_map_at_k(n_clips),
              "multi mAP@10": metrics.chance_multi_map_at_k(matches, n_clips)}
    oracle = {"mAP@10": oracle_map_at_k(truth), "multi mAP@10": 1.0}
    quality_path = results / "tables" / "correspondence_quality.csv"
    quality = estimate_quality_by_kind(pd.read_csv(quality_path)) if quality_path.exists() else None
    return paired_table(seeds, chance, oracle, quality)


def per_seed_from_files(results: Path) -> pd.DataFrame:
    """``per_seed`` of a profile's results folder: the seeds behind each row of ``verdict_from_files``."""
    results = Path(results)
    return per_seed(pd.read_csv(results / "metrics.csv"), results / "stage2")


def paired_differences(seeds: pd.DataFrame, metric: str = "mAP@10") -> pd.DataFrame:
    """Student by student, what ``paired_table`` averages: ``kind - reference`` for reference
    ``stage 1`` (the initial member's best weights) and ``control`` (same member, seed and weights).

    Columns kind, weights, student, reference, delta (a fraction, like the metric).
    """
    if "weights" not in seeds:
        seeds = seeds.assign(weights="best")
    initial = seeds[(seeds.kind == STAGE1) & (seeds.weights == "best")].set_index("student")
    rows = []
    for (kind, weights), group in seeds.groupby(["kind", "weights"], sort=False):
        group = group.set_index("student").sort_index()
        control = seeds[(seeds.kind == "control") & (seeds.weights == weights)].set_index("student")[metric]
        for reference, values in (("stage 1", initial_of(group, initial)[metric]), ("control", control)):
            if kind == STAGE1 or (reference == "control" and kind == "control"):
                continue
            delta = (group[metric] - values.reindex(group.index)).dropna()
            rows += [{"kind": kind, "weights": weights, "student": int(student), "reference": reference, "delta": d}
                     for student, d in delta.items()]
    return pd.DataFrame(rows, columns=["kind", "weights", "student", "reference", "delta"])


def kind_order(kinds) -> list[str]:
    """The kinds present, in the verdict's order (stage 1, control, teachers), others after, released last."""
    present = list(dict.fromkeys(kinds))
    known = [k for k in KIND_ORDER if k in present]
    rest = sorted(k for k in present if k not in KIND_ORDER and k != "released")
    return known + rest + (["released"] if "released" in present else [])


def kind_colors(kinds) -> dict[str, str]:
    """A colour for every kind: the fixed ones above, then the tab10 colours for any other."""
    spare = iter(c for c in plt.get_cmap("tab10").colors if c not in KIND_COLORS.values())
    return {k: KIND_COLORS.get(k) or next(spare) for k in kind_order(kinds)}


def _number(value: float, sign: bool = False) -> str:
    """Two decimals, with a true minus sign; ``sign`` also writes the plus."""
    return (f"{value:+.2f}" if sign else f"{value:.2f}").replace("-", "−")


def _interval(low: float, high: float) -> str:
    """'[−1.20, +3.40]' (already in percent or points), 'n/a' without an interval."""
    return "n/a" if pd.isna(low) or pd.isna(high) else f"[{_number(low, True)}, {_number(high, True)}]"


def _interval_row(ax, y: float, points, color: str, marker: str) -> tuple[float, tuple, list[float]]:
    """One row of a dot plot: each seed a hollow point, the mean a filled marker whose error bar is the
    95 % t interval (none with one seed). Returns the mean, the interval and the x values drawn."""
    points = np.asarray(points, dtype=float)
    mean = float(points.mean())
    low, high = t_interval(mean, points.std(ddof=1) if len(points) > 1 else np.nan, len(points))
    ax.scatter(points, np.full(len(points), y), s=26, facecolors="none", edgecolors=color, linewidths=1.1, zorder=2)
    ax.errorbar([mean], [y], xerr=None if pd.isna(low) else [[mean - low], [high - mean]], fmt=marker,
                color=color, markersize=7, capsize=3, lw=1.6, zorder=3)
    return mean, (low, high), [*points, mean, *([] if pd.isna(low) else [low, high])]


def _fit_to(ax, values, zero: bool = False) -> None:
    """x limits just around ``values`` (and zero, for a panel of differences): the labels sit beside
    the panel, so the data may use its whole width."""
    values = [float(v) for v in values if not pd.isna(v)] + ([0.0] if zero else [])
    lo, hi = (min(values), max(values)) if values else (-1.0, 1.0)
    margin = 0.06 * max(hi - lo, 1e-6)
    ax.set_xlim(lo - margin, hi + margin)


def plot_verdict(table: pd.DataFrame, seeds: pd.DataFrame, metric: str = "mAP@10"):
    """The verdict as three dot plots that share their rows (one per system and weights), each with a
    column of labels to its right, outside the data.

    Left: each system's test ``metric`` in percent, every seed a point, the mean with its 95 % t
    interval; chance and the oracle ranking are named in the title, not drawn (they would squash the
    range). Middle and right: the paired differences student by student in points, against the
    initial stage-1 member (its best weights) and against the control (same member, seed and
    weights), the mean with its 95 % paired t interval and the zero line. ``table`` is
    ``paired_table``'s (for chance and the oracle), ``seeds`` ``per_seed``'s.
    """
    if "weights" not in seeds:
        seeds = seeds.assign(weights="best")
    systems = kind_order(s for s in table.system if s not in ("chance", "oracle ranking"))
    weights = [w for w in runs.WEIGHTS if w in set(seeds.weights)]
    colors = kind_colors(systems)
    differences = paired_differences(seeds, metric)
    offsets = {w: (k - (len(weights) - 1) / 2) * 0.34 for k, w in enumerate(weights)}
    height = 1.8 + 0.5 * len(systems) * max(1, len(weights))
    drawn = [[], [], []]  # x values per panel
    fig, axes = plt.subplots(1, 6, figsize=(17, height), sharey=True, layout="constrained",
                             gridspec_kw={"width_ratios": [1.25, 0.42, 1, 0.58, 1, 0.58]})
    fig.get_layout_engine().set(w_pad=0.02, wspace=0.0)
    panels, labels = axes[0::2], axes[1::2]
    for i, system in enumerate(systems):
        for w in weights:
            y, marker, color = i + offsets[w], WEIGHT_MARKERS.get(w, "D"), colors[system]
            values = [100 * seeds.loc[(seeds.kind == system) & (seeds.weights == w), metric]]
            values += [100 * differences.delta[(differences.kind == system) & (differences.weights == w)
                                               & (differences.reference == reference)] for reference in REFERENCES]
            for panel, points in enumerate(values):
                if points.empty:
                    continue
                mean, interval, xs = _interval_row(panels[panel], y, points, color, marker)
                drawn[panel] += xs
                ahead = f"  {int((points > 0).sum())}/{len(points)} ahead" if panel else ""
                labels[panel].text(0.02, y, f"{_number(mean, sign=panel > 0)} {_interval(*interval)}{ahead}",
                                   ha="left", va="center", fontsize=8, color=color)
        for ax, name in ((panels[1], STAGE1), (panels[2], "control")):
            if system == name:
                ax.text(0.0, i, "the reference", ha="center", va="center", fontsize=8, color="0.35", style="italic",
                        bbox={"facecolor": "white", "edgecolor": "none", "pad": 1.5}, zorder=4)
    _fit_to(panels[0], drawn[0])
    for ax in panels[1:]:
        _fit_to(ax, drawn[1] + drawn[2], zero=True)  # one scale for both differences
        ax.axvline(0, color="black", lw=0.9, zorder=1)
        ax.set_xlabel(f"Δ {metric} (percentage points)")
    for ax in labels:
        ax.axis("off")
    fixed = table.set_index("system")[f"{metric} mean"]
    scale = [f"{name} {100 * fixed[name]:.2f} %" for name in ("chance", "oracle ranking") if name in fixed]
    n = seeds[seeds.kind != STAGE1].groupby(["kind", "weights"]).size()
    students = (f"{n.min()} paired student{'' if n.max() == 1 else 's'}" if len(n) and n.min() == n.max() else
                f"{n.min()}–{n.max()} paired students" if len(n) else "no paired students")
    panels[0].set(xlabel=f"test {metric} (%)", yticks=range(len(systems)), yticklabels=systems,
                  title=f"test {metric}, 95 % t interval" + (f"\n({', '.join(scale)})" if scale else ""))
    panels[1].set_title("Δ to the initial stage-1 member\n(its best-validation weights)")
    panels[2].set_title("Δ to the control\n(same member, seed and weights)")
    panels[0].set_ylim(len(systems) - 0.5, -0.5)  # first system on top
    for ax in panels:
        ax.grid(axis="y", visible=False)
    handles = [plt.Line2D([], [], marker=WEIGHT_MARKERS.get(w, "D"), color="0.2", ls="", markersize=7,
                          label=f"{WEIGHTS_LABELS.get(w, w)}: mean") for w in weights]
    handles.append(plt.Line2D([], [], marker="o", mfc="none", mec="0.2", ls="", label="one seed (paired student)"))
    handles.append(plt.Line2D([], [], color="0.2", marker="|", markersize=8, label="95 % interval (t; paired t for Δ)"))
    fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), frameon=False)
    fig.suptitle(f"Stage 2 on the test split: {students} per kind; labels: mean [95 % interval]")
    return fig


def compact(table: pd.DataFrame) -> pd.DataFrame:
    """The verdict table as notebook 04 and the README print it: percent, mean ± std; each paired
    difference in points as mean ± std [95 % paired t interval] (students ahead), for mAP@10 and multi
    mAP@10. Works on ``paired_table``'s rows and on stored aggregates (intervals from mean, std, n).
    The full table is ``tables/verdict.csv``.
    """
    def spread(mean, std, sign=False):
        if mean is None or pd.isna(mean):
            return ""
        return _number(100 * mean, sign) + ("" if std is None or pd.isna(std) else f" ± {100 * std:.2f}")

    rows = []
    for _, row in with_intervals(table).iterrows():
        out = {"system": row["system"], "weights": "" if pd.isna(row["weights"]) else row["weights"],
               "seeds": "" if pd.isna(row["seeds"]) else int(row["seeds"]) or ""}
        for metric in METRICS:
            prefix = metric.removesuffix(METRICS[0])  # "" or "multi "
            out[f"{metric} (%)"] = spread(row.get(f"{metric} mean"), row.get(f"{metric} std"))
            for reference in REFERENCES:
                # stage 1 minus the control is the control's Δ stage 1 turned round: not a result of its own
                mean = np.nan if row["system"] == STAGE1 else row.get(f"{metric} Δ {reference} mean")
                low, high = (100 * row.get(c, np.nan) for c in ci_columns(metric, reference))
                interval = _interval(low, high)
                out[f"{prefix}Δ {reference}"] = "" if mean is None or pd.isna(mean) else (
                    f"{spread(mean, row.get(f'{metric} Δ {reference} std'), sign=True)} "
                    f"{interval if interval != 'n/a' else '[n/a]'} ({row.get(f'{metric} Δ {reference} wins')})")
        if "estimate AP" in row:
            auc, ap = row.get("estimate ROC-AUC"), row.get("estimate AP")
            out["estimate ROC-AUC / AP (%)"] = "" if ap is None or pd.isna(ap) else f"{100 * auc:.2f} / {100 * ap:.2f}"
        rows.append(out)
    return pd.DataFrame(rows)


def _call(low: float, high: float) -> int | None:
    """+1 where the interval lies above zero, -1 below, 0 where it holds zero, None without one."""
    if pd.isna(low) or pd.isna(high):
        return None
    return 1 if low > 0 else -1 if high < 0 else 0


CALLS_IN_WORDS = {1: "a gain, its interval above zero", -1: "a loss, its interval below zero",
                  0: "not told from zero", None: "no interval with one student"}


def _difference(row: pd.Series, metric: str, reference: str) -> str:
    """'+1.20 ± 0.80 points, 95 % CI [−0.79, +3.19], 2 of 3 students ahead (not told from zero)'."""
    mean, std = row.get(f"{metric} Δ {reference} mean"), row.get(f"{metric} Δ {reference} std")
    if mean is None or pd.isna(mean):
        return "not measured"
    ahead, _, n = str(row.get(f"{metric} Δ {reference} wins", "")).partition("/")
    low, high = (row.get(c, np.nan) for c in ci_columns(metric, reference))
    spread = f" ± {100 * std:.2f}" if std is not None and not pd.isna(std) else ""
    return (f"{_number(100 * mean, True)}{spread} points, 95 % CI {_interval(100 * low, 100 * high)}, "
            f"{ahead} of {n} students ahead ({CALLS_IN_WORDS[_call(low, high)]})")


WEIGHTS_IN_WORDS = {"best": "Best-validation weights (our model selection)",
                    "last": "Last-epoch weights (what the original script tests after training)"}
REFERENCES_IN_WORDS = {"stage 1": "against the member it started from", "control": "against the control"}
# the same references in the conclusion, which speaks of all students at once
REFERENCES_IN_CONCLUSION = {"stage 1": "Against the member each student started from",
                            "control": "Against the control (the same second training on L_sup alone)"}


def _system_in_words(system: str, row: pd.Series) -> str:
    """One bullet: a system's mean of each metric and its paired differences, with their calls."""
    parts = []
    for metric in METRICS:
        spread = f" ± {100 * row[f'{metric} std']:.2f}" if not pd.isna(row[f"{metric} std"]) else ""
        sentence = f"On {metric}, {100 * row[f'{metric} mean']:.2f}{spread} %"
        for reference in REFERENCES:
            if not (system == STAGE1 or (system == "control" and reference == "control")):
                sentence += f"; {REFERENCES_IN_WORDS[reference]} {_difference(row, metric, reference)}"
        parts.append(sentence + ".")
    return f"- {system}: n = {int(row['seeds'])}. " + " ".join(parts)


def in_words(table: pd.DataFrame) -> str:
    """The verdict table said in sentences (markdown): one paragraph per kind of weights, the scale,
    and the ``conclusion``.

    Only what the table holds: means and sample stds (ddof 1) over n paired students, and for
    mAP@10 and multi mAP@10 the paired differences to the initial stage-1 member and to the control
    with their 95 % paired t intervals and how many students are ahead. A difference is called a
    gain or a loss only when its interval excludes zero. Works on stored aggregates too.
    """
    table = with_intervals(table)
    rows = table[~table.system.isin(["chance", "oracle ranking"])]
    fixed = table.set_index("system")["mAP@10 mean"]
    paragraphs = []
    for weights in [w for w in runs.WEIGHTS if w in set(rows.weights)]:
        chosen = rows[rows.weights == weights].set_index("system")
        lines = [f"**{WEIGHTS_IN_WORDS.get(weights, weights)}** (test split; percent, mean ± sample std over n "
                 "paired students; differences in points with their 95 % paired t interval):"]
        lines += [_system_in_words(system, row) for system, row in chosen.iterrows()]
        paragraphs.append("\n".join(lines))
    if "chance" in fixed and "oracle ranking" in fixed:
        paragraphs.append(f"For scale: chance {100 * fixed['chance']:.2f} %, the oracle ranking "
                          f"{100 * fixed['oracle ranking']:.2f} %.")
    return "\n\n".join([*paragraphs, conclusion(table)])


def _calls(table: pd.DataFrame, weights: str) -> dict:
    """(kind, metric, reference) -> (mean, low, high) of every paired difference of one kind of weights."""
    out = {}
    for _, row in table[(table.weights == weights) & (table.system != STAGE1)].iterrows():
        for metric in METRICS:
            for reference in REFERENCES:
                mean = row.get(f"{metric} Δ {reference} mean")
                if mean is not None and not pd.isna(mean):
                    out[row["system"], metric, reference] = (mean, *(row.get(c) for c in ci_columns(metric, reference)))
    return out


def _listing(items) -> str:
    items = list(items)
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _against(calls: dict, reference: str) -> str:
    """One sentence: every kind's difference to ``reference`` on both metrics, then what is told from zero."""
    per_metric, told = [], []
    for metric in METRICS:
        shown = [(kind, values) for (kind, m, r), values in calls.items() if m == metric and r == reference]
        if shown:
            per_metric.append(f"on {metric} " + ", ".join(f"{kind} {_number(100 * mean, True)} "
                                                          f"{_interval(100 * low, 100 * high)}"
                                                          for kind, (mean, low, high) in shown))
            for call, side in ((1, "ahead"), (-1, "behind")):
                kinds = [kind for kind, (_, low, high) in shown if _call(low, high) == call]
                told += [f"{_listing(kinds)} {side} on {metric}"] if kinds else []
    if not per_metric:
        return ""
    outcome = f"told from zero: {_listing(told)}" if told else "none of these intervals excludes zero"
    return f"{REFERENCES_IN_CONCLUSION[reference]}, in points with 95 % CI: {'; '.join(per_metric)}; {outcome}."


def _answer(calls: dict) -> str:
    """Does distilling estimated correspondences help beyond training longer? From the intervals against
    the control of the kinds whose targets are estimates (neither the control nor the truth)."""
    estimated = {key: values for key, values in calls.items()
                 if key[2] == "control" and key[0] not in ("control", "truth")}
    if not estimated:
        return "No student distilled estimated correspondences beside a control: the question stays open."
    kinds = list(dict.fromkeys(kind for kind, _, _ in estimated))
    if not any(_call(low, high) in (1, -1) for _, low, high in estimated.values()):
        return ("So this run cannot tell whether distilling estimated correspondences helps beyond training longer: "
                f"against the control every interval of {_listing(kinds)} includes zero, on both metrics.")
    clauses = []
    for kind in kinds:  # every teacher kind gets its answer, the ones that cannot be told apart too
        called = {metric: _call(low, high) for (k, metric, _), (_, low, high) in estimated.items() if k == kind}
        said = [f"{verb} on {_listing(metrics)}" for verb, sides in (("helps", (1,)), ("does worse", (-1,)),
                                                                     ("cannot be told apart", (0, None)))
                if (metrics := [m for m, c in called.items() if c in sides])]
        if len(said) == 1 and said[0].startswith("cannot") and len(called) > 1:
            said = ["cannot be told apart on either metric"]
        clauses.append(f"{kind} {' and '.join(said)}")
    return f"So in this run, distilling estimated correspondences compared with training longer (the control): {'; '.join(clauses)}."


def conclusion(table: pd.DataFrame) -> str:
    """A few sentences that answer notebook 04's question from the intervals: does stage 2 help, against
    the member each student started from and against the control, on mAP@10 and multi mAP@10? Read
    from the best-validation weights; the other weights are compared call by call."""
    table = with_intervals(table)
    students = table[~table.system.isin([STAGE1, "chance", "oracle ranking"])]
    weights = [w for w in runs.WEIGHTS if w in set(students.weights)]
    if not weights:
        return "**Conclusion.** No stage-2 student was scored: nothing to conclude."
    main = weights[0]
    calls = _calls(table, main)
    chosen = students[students.weights == main].dropna(subset=["mAP@10 Δ stage 1 wins"])
    sizes = sorted({_students(wins, f"verdict row {system!r} ({main})")
                    for system, wins in zip(chosen.system, chosen["mAP@10 Δ stage 1 wins"])})
    n = f"n = {sizes[0]}" if len(sizes) == 1 else f"n = {sizes[0]}–{sizes[-1]}" if sizes else "no"
    sentences = [f"**Conclusion** ({WEIGHTS_LABELS.get(main, main)}, {n} paired students per kind; a difference "
                 "counts only when its 95 % paired t interval excludes zero).",
                 _against(calls, "stage 1"), _against(calls, "control"), _answer(calls)]
    for other in weights[1:]:
        differ = [f"{kind} {REFERENCES_IN_WORDS[reference]} on {metric} is {CALLS_IN_WORDS[_call(*values[1:])]}"
                  for (kind, metric, reference), values in _calls(table, other).items()
                  if _call(*values[1:]) != _call(*calls.get((kind, metric, reference), (np.nan,) * 3)[1:])]
        sentences.append(f"The {WEIGHTS_LABELS.get(other, other)} give the same calls." if not differ else
                         f"With the {WEIGHTS_LABELS.get(other, other)} the calls differ: {'; '.join(differ)}.")
    return " ".join(s for s in sentences if s)
