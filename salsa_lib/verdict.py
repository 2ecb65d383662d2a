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
    """model folder -> teacher kind and initial member, from each stage-2 run record."""
    rows = [{"model": model, "kind": kind, "student": student}
            for model, (kind, student) in runs.stage2_teacher_kinds(stage2_dir).items()]
    return pd.DataFrame(rows, columns=["model", "kind", "student"])


def per_seed(table: pd.DataFrame, stage2_dir: Path) -> pd.DataFrame:
    """metrics.csv rows as (kind, student, metrics): stage-1 members are the ``i = j`` kind, student = member.

    One row per model: its best-validation weights (metrics.csv also scores the last epoch's).
    """
    if "weights" in table:
        table = table[table["weights"] == "best"]
    if table.model.duplicated().any():
        raise ValueError(f"metrics.csv lists {sorted(set(table.model[table.model.duplicated()]))} more than once: "
                         "cannot pair the seeds")
    stage1 = table[table.stage.astype(str) == "1"].assign(
        kind="i = j (stage 1)", student=lambda d: d.model.str.removeprefix("member").astype(int))
    stage2 = table[table.stage.astype(str) == "2"].merge(stage2_kinds(stage2_dir), on="model", how="inner")
    return pd.concat([stage1, stage2])[["kind", "student", "model", *METRICS]].reset_index(drop=True)


def paired_table(seeds: pd.DataFrame, chance: dict, oracle: dict, quality: dict | None = None) -> pd.DataFrame:
    """One row per kind: mean and std (ddof 1) over students, and the paired difference to the control.

    ``chance`` and ``oracle`` map metric names to fixed values; ``quality`` maps a kind to the
    ROC-AUC and AP of its estimate of the training correspondences (absent: left empty).
    """
    control = seeds[seeds.kind == "control"].set_index("student")
    rows = []
    for kind in ROWS:
        row = {"system": kind}
        if kind in ("chance", "oracle ranking"):
            source = chance if kind == "chance" else oracle
            row.update({f"{m} mean": source.get(m, np.nan) for m in METRICS}, seeds=0)
        else:
            group = seeds[seeds.kind == kind].set_index("student").sort_index()
            if group.empty:
                continue
            row["seeds"] = len(group)
            for m in METRICS:
                row[f"{m} mean"], row[f"{m} std"] = group[m].mean(), group[m].std(ddof=1)
                paired = group[m] - control[m].reindex(group.index)
                if kind != "control" and paired.notna().any():
                    row[f"{m} Δ control mean"] = paired.mean()
                    row[f"{m} Δ control std"] = paired.std(ddof=1)
                    row[f"{m} Δ control wins"] = f"{int((paired > 0).sum())}/{int(paired.notna().sum())}"
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
    """Left: each system's test metrics (mean ± std over seeds), chance and oracle as lines.
    Right: each teacher kind minus the control, per student (points) and on average (bars ± std)."""
    fig, axes = plt.subplots(1, 2, figsize=(13, 4), gridspec_kw={"width_ratios": [3, 2]})
    systems = table[~table.system.isin(["chance", "oracle ranking"])].reset_index(drop=True)
    x, width = np.arange(len(systems)), 0.38
    for shift, m, color in ((-width / 2, "mAP@10", "tab:blue"), (width / 2, "multi mAP@10", "tab:orange")):
        axes[0].bar(x + shift, systems[f"{m} mean"], width, yerr=systems.get(f"{m} std"), capsize=3, color=color, label=m)
        for system, style in (("chance", ":"), ("oracle ranking", "--")):
            value = table.loc[table.system == system, f"{m} mean"]
            if len(value):
                axes[0].axhline(float(value.iloc[0]), ls=style, color=color, lw=1, label=f"{system} ({m})")
    axes[0].set(xticks=x, xticklabels=systems.system, ylabel="test score", title="test split, mean ± std over seeds")
    axes[0].legend(fontsize=7, ncol=2)
    paired = systems.dropna(subset=["mAP@10 Δ control mean"]) if "mAP@10 Δ control mean" in systems else systems.iloc[:0]
    x = np.arange(len(paired))
    for shift, m, color in ((-width / 2, "mAP@10", "tab:blue"), (width / 2, "multi mAP@10", "tab:orange")):
        axes[1].bar(x + shift, paired[f"{m} Δ control mean"], width, yerr=paired[f"{m} Δ control std"], capsize=3,
                    color=color, label=m)
    axes[1].axhline(0, color="black", lw=0.8)
    axes[1].set(xticks=x, xticklabels=paired.system, ylabel="difference to the control",
                title="paired difference to the control (same member, seed, epochs)")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    return fig
