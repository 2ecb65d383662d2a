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

from salsa_lib import metrics, runs

METRICS = ("mAP@10", "multi mAP@10")
# row order of the verdict table: floor, stage 1, control, the teachers, ceiling
ROWS = ("chance", "i = j (stage 1)", "control", "self", "ensemble", "truth", "oracle ranking")


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


def plot_verdict(table: pd.DataFrame):
    """Left: each system's test mAP@10 by weights (mean ± std over seeds), chance as a line.
    Right: each stage-2 kind minus its control, student by student, on average (bars ± std)."""
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.2), gridspec_kw={"width_ratios": [3, 2]})
    systems = table[~table.system.isin(["chance", "oracle ranking"])]
    names = list(dict.fromkeys(systems.system))
    kinds = [w for w in runs.WEIGHTS if w in set(systems.weights)]
    width = 0.8 / max(1, len(kinds))
    colors = {"best": "tab:blue", "last": "tab:orange"}
    for k, weights in enumerate(kinds):
        rows = systems[systems.weights == weights].set_index("system").reindex(names)
        x = np.arange(len(names)) + (k - (len(kinds) - 1) / 2) * width
        axes[0].bar(x, 100 * rows["mAP@10 mean"], width, yerr=100 * rows["mAP@10 std"], capsize=3,
                    color=colors.get(weights), label=f"{weights} weights")
        if "mAP@10 Δ control mean" in rows:
            axes[1].bar(x, 100 * rows["mAP@10 Δ control mean"], width, yerr=100 * rows["mAP@10 Δ control std"],
                        capsize=3, color=colors.get(weights), label=f"{weights} weights")
    chance = table.loc[table.system == "chance", "mAP@10 mean"]
    if len(chance):
        axes[0].axhline(100 * float(chance.iloc[0]), ls=":", color="gray", label="chance")
    top = float(100 * (systems["mAP@10 mean"] + systems["mAP@10 std"].fillna(0)).max())
    oracle = table.loc[table.system == "oracle ranking", "mAP@10 mean"]
    ceiling = f"; oracle ranking {100 * float(oracle.iloc[0]):.1f}" if len(oracle) else ""
    axes[0].set(xticks=np.arange(len(names)), xticklabels=names, ylabel="test mAP@10 (%)", ylim=(0, top * 1.15),
                title=f"test mAP@10, mean ± std over seeds{ceiling}")
    axes[0].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    axes[1].axhline(0, color="black", lw=0.8)
    axes[1].set(xticks=np.arange(len(names)), xticklabels=names, ylabel="Δ mAP@10 to the control (points)",
                title="minus the control (same member and seed)")
    axes[1].tick_params(axis="x", rotation=20)
    axes[0].tick_params(axis="x", rotation=20)
    fig.tight_layout()
    return fig


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
