"""The verdict of stage 2 with error bars: each teacher kind against the control, over paired seeds.

Student k of every kind starts from stage-1 member k with the same seed, so a kind and the control
differ only in their loss; the paired difference (kind - control, per student) is the effect of the
targets, free of the effect of training longer. Everything here is computed from files (metrics.csv,
the stage-2 run records, the correspondence-quality table, the truth matrix), so the table can be
rebuilt and checked without retraining.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from salsa_lib import runs
from salsa_lib.core import metrics

METRICS = ("mAP@10", "multi mAP@10")
# row order of the verdict table: floor, stage 1, control, the teachers, ceiling
ROWS = ("chance", "i = j (stage 1)", "control", "self", "ensemble", "truth", "oracle ranking")
STAGE1 = ROWS[1]  # the stage-1 members: the kind trained on the i = j labels
# one colour per kind of model, the same in every figure of notebooks 03 and 04
KIND_COLORS = {STAGE1: "#7f7f7f", "control": "#e08214", "self": "#8073ac", "ensemble": "#2166ac",
               "truth": "#1b9e77", "released": "#b2182b"}
KIND_ORDER = (STAGE1, "control", "self", "ensemble", "truth")
WEIGHT_MARKERS = {"best": "o", "last": "s"}
WEIGHTS_LABELS = {"best": "best-validation weights", "last": "last-epoch weights"}


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
    """model folder -> teacher kind and initial member, for exactly the runs of the latest grid."""
    rows = [{"model": model, "kind": kind, "student": student}
            for model, (kind, student) in runs.stage2_grid(stage2_dir).items()]
    return pd.DataFrame(rows, columns=["model", "kind", "student"])


def per_seed(table: pd.DataFrame, stage2_dir: Path) -> pd.DataFrame:
    """metrics.csv rows as (kind, student, weights, metrics): stage-1 members are the ``i = j`` kind,
    student = member; stage 2 is the latest grid, every run of which must have been scored."""
    if "weights" not in table:
        table = table.assign(weights="best")
    if table.duplicated(["model", "weights"]).any():
        twice = sorted(set(table.model[table.duplicated(["model", "weights"])]))
        raise ValueError(f"metrics.csv lists {twice} more than once per weights: cannot pair the seeds")
    stage1 = table[table.stage.astype(str) == "1"].assign(
        kind="i = j (stage 1)", student=lambda d: d.model.str.removeprefix("member").astype(int))
    grid = stage2_kinds(stage2_dir)
    unscored = sorted(set(grid.model) - set(table.model))
    if unscored:
        raise ValueError(f"stage-2 run(s) {unscored} of the latest grid are not in metrics.csv: rerun notebook 04")
    stage2 = table[table.stage.astype(str) == "2"].merge(grid, on="model", how="inner")
    columns = ["kind", "student", "weights", "model", *METRICS]
    return pd.concat([stage1, stage2])[columns].reset_index(drop=True)


def _paired(group: pd.DataFrame, reference: pd.DataFrame, metric: str, name: str) -> dict:
    """Mean, std (ddof 1) and wins of ``group - reference``, student by student."""
    paired = group[metric] - reference[metric].reindex(group.index)
    if paired.notna().sum() == 0:
        return {}
    return {f"{metric} Δ {name} mean": paired.mean(), f"{metric} Δ {name} std": paired.std(ddof=1),
            f"{metric} Δ {name} wins": f"{int((paired > 0).sum())}/{int(paired.notna().sum())}"}


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
                    row.update(_paired(group, initial, m, "stage 1"))
            row.update((quality or {}).get(kind, {}))
            rows.append(row)
    return pd.DataFrame(rows)


def estimate_quality_by_kind(quality: pd.DataFrame) -> dict:
    """The correspondence-quality table (notebook 02) keyed by teacher kind: what each kind distils."""
    by_name = quality.set_index("estimate")[["ROC-AUC", "AP"]]
    members = by_name[by_name.index.str.fullmatch(r"member\d+")]
    out = {}
    truth = [name for name in by_name.index if name.startswith("truth")]
    if truth:
        out["truth"] = by_name.loc[truth[0]].to_dict()
    if "ensemble" in by_name.index:
        out["ensemble"] = by_name.loc["ensemble"].to_dict()
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
    initial = seeds[(seeds.kind == STAGE1) & (seeds.weights == "best")].set_index("student")[metric]
    rows = []
    for (kind, weights), group in seeds.groupby(["kind", "weights"], sort=False):
        group = group.set_index("student").sort_index()[metric]
        control = seeds[(seeds.kind == "control") & (seeds.weights == weights)].set_index("student")[metric]
        for reference, values in (("stage 1", initial), ("control", control)):
            if kind == STAGE1 or (reference == "control" and kind == "control"):
                continue
            delta = (group - values.reindex(group.index)).dropna()
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


def _dot_row(ax, y: float, mean: float, std: float, points, color: str, marker: str) -> list[float]:
    """One row of a dot plot: each seed as a hollow point, the mean as a filled marker with ± std.
    Returns the x values drawn (for the axis limits)."""
    ax.scatter(points, np.full(len(points), y), s=26, facecolors="none", edgecolors=color, linewidths=1.1, zorder=2)
    ax.errorbar([mean], [y], xerr=None if pd.isna(std) else [std], fmt=marker, color=color, markersize=7,
                capsize=3, lw=1.6, zorder=3)
    spread = 0.0 if pd.isna(std) else std
    return [*points, mean - spread, mean + spread]


def _room_for_labels(ax, values, symmetric: bool = False) -> None:
    """x limits around ``values`` with a margin, and room on the right for the row labels."""
    values = np.asarray([v for v in values if not pd.isna(v)], dtype=float)
    lo, hi = (values.min(), values.max()) if len(values) else (-1.0, 1.0)
    if symmetric:
        lo, hi = min(lo, -abs(hi) * 0.2, 0.0), max(hi, abs(lo) * 0.2, 0.0)
    span = max(hi - lo, 1e-6)
    ax.set_xlim(lo - 0.08 * span, hi + 0.95 * span)


def plot_verdict(table: pd.DataFrame, seeds: pd.DataFrame, metric: str = "mAP@10"):
    """The verdict as three dot plots that share their rows (one per system and weights).

    Left: each system's test ``metric`` in percent, mean ± std (ddof 1) over seeds, every seed a
    point; chance and the oracle ranking are named in the title, not drawn (they would squash the
    range). Middle and right: the paired differences student by student in points, against the
    initial stage-1 member (its best weights) and against the control (same member, seed and
    weights), with the zero line. ``table`` is ``paired_table``'s, ``seeds`` ``per_seed``'s.
    """
    if "weights" not in seeds:
        seeds = seeds.assign(weights="best")
    systems = kind_order(s for s in table.system if s not in ("chance", "oracle ranking"))
    weights = [w for w in runs.WEIGHTS if w in set(seeds.weights)]
    colors = kind_colors(systems)
    differences = paired_differences(seeds, metric)
    rows = table.set_index(["system", "weights"])
    offsets = {w: (k - (len(weights) - 1) / 2) * 0.34 for k, w in enumerate(weights)}
    height = 1.8 + 0.5 * len(systems) * max(1, len(weights))
    drawn = [[], [], []]  # x values per panel
    fig, axes = plt.subplots(1, 3, figsize=(15, height), sharey=True, gridspec_kw={"width_ratios": [1.25, 1, 1]})
    for i, system in enumerate(systems):
        for w in weights:
            y = i + offsets[w]
            marker, color = WEIGHT_MARKERS.get(w, "D"), colors[system]
            values = 100 * seeds.loc[(seeds.kind == system) & (seeds.weights == w), metric]
            if (system, w) in rows.index and len(values):
                row = rows.loc[(system, w)]
                mean, std = 100 * row[f"{metric} mean"], 100 * row[f"{metric} std"]
                drawn[0] += _dot_row(axes[0], y, mean, std, values, color, marker)
                spread = "" if pd.isna(std) else f" ± {std:.2f}"
                axes[0].text(0.99, y, f"{mean:.2f}{spread}", transform=axes[0].get_yaxis_transform(),
                             ha="right", va="center", fontsize=8)
            for panel, ax, reference in ((1, axes[1], "stage 1"), (2, axes[2], "control")):
                chosen = differences[(differences.kind == system) & (differences.weights == w)
                                     & (differences.reference == reference)]
                if chosen.empty:
                    continue
                delta = 100 * chosen.delta
                std = delta.std(ddof=1) if len(delta) > 1 else np.nan
                drawn[panel] += _dot_row(ax, y, delta.mean(), std, list(delta), color, marker)
                spread = "" if pd.isna(std) else f" ± {std:.2f}"
                ax.text(0.99, y, f"{delta.mean():+.2f}{spread} ({int((delta > 0).sum())}/{len(delta)} ahead)",
                        transform=ax.get_yaxis_transform(), ha="right", va="center", fontsize=8)
        for ax, reference, name in ((axes[1], "stage 1", STAGE1), (axes[2], "control", "control")):
            if system == name:
                ax.text(0.0, i, "the reference", ha="center", va="center", fontsize=8, color="0.35", style="italic",
                        bbox={"facecolor": "white", "edgecolor": "none", "pad": 1.5}, zorder=4)
    _room_for_labels(axes[0], drawn[0])
    for ax in axes[1:]:
        _room_for_labels(ax, drawn[1] + drawn[2], symmetric=True)  # one scale for both differences
        ax.axvline(0, color="black", lw=0.9, zorder=1)
        ax.set_xlabel(f"Δ {metric} (percentage points)")
    fixed = table.set_index("system")[f"{metric} mean"]
    scale = [f"{name} {100 * fixed[name]:.1f} %" for name in ("chance", "oracle ranking") if name in fixed]
    n = seeds[seeds.kind != STAGE1].groupby(["kind", "weights"]).size()
    students = (f"{n.min()} paired student{'' if n.max() == 1 else 's'}" if len(n) and n.min() == n.max() else
                f"{n.min()}–{n.max()} paired students" if len(n) else "no paired students")
    axes[0].set(xlabel=f"test {metric} (%)", yticks=range(len(systems)), yticklabels=systems,
                title=f"test {metric}: mean ± std, a point per seed" + (f"\n({', '.join(scale)})" if scale else ""))
    axes[1].set_title("Δ to the initial stage-1 member\n(its best-validation weights)")
    axes[2].set_title("Δ to the control\n(same member, seed and weights)")
    axes[0].set_ylim(len(systems) - 0.5, -0.5)  # first system on top
    for ax in axes:
        ax.grid(axis="y", visible=False)
    handles = [plt.Line2D([], [], marker=WEIGHT_MARKERS.get(w, "D"), color="0.2", ls="", markersize=7,
                          label=f"{WEIGHTS_LABELS.get(w, w)}: mean ± std") for w in weights]
    handles.append(plt.Line2D([], [], marker="o", mfc="none", mec="0.2", ls="", label="one seed (paired student)"))
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), frameon=False, bbox_to_anchor=(0.5, 0.0))
    fig.suptitle(f"Stage 2 on the test split: {students} per kind", y=0.995)
    fig.tight_layout(rect=(0, 0.07, 1, 0.97))
    return fig


def compact(table: pd.DataFrame, metric: str = "mAP@10") -> pd.DataFrame:
    """The verdict table as the README prints it (benchmarks/readme_verdict.py): percent, mean ± std,
    paired differences in points with the students ahead. The full table is ``tables/verdict.csv``.
    """
    def spread(mean, std, sign=False):
        if mean is None or pd.isna(mean):
            return ""
        text = (f"{100 * mean:+.2f}" if sign else f"{100 * mean:.2f}") + ("" if pd.isna(std) else f" ± {100 * std:.2f}")
        return text.replace("-", "−")

    rows = []
    for _, row in table.iterrows():
        out = {"system": row["system"], "weights": "" if pd.isna(row["weights"]) else row["weights"],
               "seeds": "" if pd.isna(row["seeds"]) else int(row["seeds"]) or "",
               metric: spread(row[f"{metric} mean"], row.get(f"{metric} std"))}
        for reference in ("stage 1", "control"):
            # stage 1 minus the control is the control's Δ stage 1 turned round: not a result of its own
            mean = np.nan if row["system"] == STAGE1 else row.get(f"{metric} Δ {reference} mean")
            out[f"Δ {reference}"] = "" if mean is None or pd.isna(mean) else (
                f"{spread(mean, row.get(f'{metric} Δ {reference} std'), sign=True)} "
                f"({row.get(f'{metric} Δ {reference} wins')})")
        if f"multi {metric} mean" in row:
            out[f"multi {metric}"] = spread(row[f"multi {metric} mean"], row.get(f"multi {metric} std"))
        if "estimate AP" in row:
            auc, ap = row.get("estimate ROC-AUC"), row.get("estimate AP")
            out["estimate ROC-AUC / AP"] = "" if pd.isna(ap) else f"{auc:.3f} / {ap:.3f}"
        rows.append(out)
    return pd.DataFrame(rows)


def _difference(row: pd.Series, reference: str) -> str:
    """'+1.20 ± 0.80 points, 2 of 3 students ahead' for a paired difference column group (percent points)."""
    mean, std = row.get(f"mAP@10 Δ {reference} mean"), row.get(f"mAP@10 Δ {reference} std")
    wins = str(row.get(f"mAP@10 Δ {reference} wins", ""))
    if mean is None or pd.isna(mean):
        return "not measured"
    ahead, _, n = wins.partition("/")
    spread = f" ± {100 * std:.2f}" if std is not None and not pd.isna(std) else ""
    within = " (within one std of zero)" if spread and abs(mean) <= std else ""
    return f"{100 * mean:+.2f}{spread} points{within}, {ahead} of {n} students ahead"


WEIGHTS_IN_WORDS = {"best": "Best-validation weights (our model selection)",
                    "last": "Last-epoch weights (what the paper reports)"}


def in_words(table: pd.DataFrame) -> str:
    """The verdict table said in sentences (markdown), one paragraph per kind of weights.

    Only what the table holds: means and sample stds (ddof 1) over n paired students, the paired
    differences to the control and to the initial stage-1 member, with how many students are ahead.
    No significance is claimed: with 3 students there is none to claim.
    """
    rows = table[~table.system.isin(["chance", "oracle ranking"])]
    fixed = table.set_index("system")["mAP@10 mean"]
    paragraphs = []
    for weights in [w for w in runs.WEIGHTS if w in set(rows.weights)]:
        chosen = rows[rows.weights == weights].set_index("system")
        lines = [f"**{WEIGHTS_IN_WORDS.get(weights, weights)}** (test mAP@10, mean ± sample std over n seeds):"]
        for system, row in chosen.iterrows():
            spread = f" ± {100 * row['mAP@10 std']:.2f}" if not pd.isna(row["mAP@10 std"]) else ""
            sentence = f"- {system}: {100 * row['mAP@10 mean']:.2f}{spread} % (n = {int(row['seeds'])})"
            if system != "i = j (stage 1)":
                sentence += f"; against the member it started from {_difference(row, 'stage 1')}"
            if system not in ("i = j (stage 1)", "control"):
                sentence += f"; against the control {_difference(row, 'control')}"
            lines.append(sentence + ".")
        paragraphs.append("\n".join(lines))
    if "chance" in fixed and "oracle ranking" in fixed:
        paragraphs.append(f"For scale: chance {100 * fixed['chance']:.2f} %, the oracle ranking "
                          f"{100 * fixed['oracle ranking']:.2f} %.")
    return "\n\n".join(paragraphs)
