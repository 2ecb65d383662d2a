"""Evaluation on the ClothoV2 protocol (method §9) and the tables and figures of notebook 04.

Every caption of the split queries all its clips; its own clip is the one relevant item (mAP@10,
R@1/5/10). We add audio-to-text R@k and, on the synthetic benchmark, mAP@10 counting every truly
matching clip as relevant. ``python -m salsa_lib.evaluation`` evaluates any checkpoint on any data
set in the ClothoV2 layout.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

from salsa_lib import paths, runs
from salsa_lib.config import DataConfig
from salsa_lib.core import metrics
from salsa_lib.core.checkpoints import load_member, saved_step
from salsa_lib.data import data_sources
from salsa_lib.data.splits import CAPTIONS_PER_CLIP, ClothoSplit, caption_clips, load_split
from salsa_lib.errors import SalsaError
from salsa_lib.files import atomic_write_csv, atomic_write_json, file_digest
from salsa_lib.stages import verdict
from salsa_lib.stages.embedding import embed_split

METRICS = ["mAP@10", "R@1", "R@5", "R@10"]


@dataclass
class Evaluation:
    """Scores of one model on one split, kept for the tables (metrics) and figures (ranks, top-5)."""

    metrics: dict[str, float]
    similarity: np.ndarray  # (captions, clips) cosine similarities
    ranks: np.ndarray  # rank of each caption's own clip
    query_similarity: np.ndarray | None = None  # (free-text queries, clips), when queries were given


def evaluate(model, split: ClothoSplit, seconds: float, batch_size: int = 32, device: str = "cpu",
             truth=None, queries: list[str] | None = None, name: str = "the model") -> Evaluation:
    """Embed the split once in eval mode and compute all metrics; ``truth`` (clips x captions) adds
    multi-relevance, ``queries`` (free text) are scored against every clip while the model is loaded.

    ``name`` (the run and its weights) and the split name the clips and captions whose embeddings
    are NaN or infinite, if any: such a model is refused, never ranked.
    """
    source = f"{name} on split {split.split!r}"
    embeddings = embed_split(model, split, seconds, batch_size, device)
    metrics.require_finite(embeddings["audio"], f"audio embeddings of {source}", split.file_names)
    metrics.require_finite(embeddings["captions"], f"caption embeddings of {source}",
                           [f"{split.file_names[i // CAPTIONS_PER_CLIP]} caption {i % CAPTIONS_PER_CLIP + 1}"
                            for i in range(split.n_captions)])
    query_similarity = None
    if queries:
        with torch.no_grad():
            query_similarity = (model.embed_text(list(queries)).float().cpu() @ embeddings["audio"].T).numpy()
        metrics.require_finite(query_similarity, f"query similarities of {source}", list(queries))
    similarity = (embeddings["captions"] @ embeddings["audio"].T).numpy()
    caption_audio = caption_clips(split.n_clips)
    ranks = metrics.ranks_of_relevant(similarity, caption_audio, source)
    result = metrics.metrics_from_ranks(ranks)
    audio_ranks = metrics.audio_to_text_ranks(similarity, caption_audio, source)
    result.update({f"A2T R@{k}": float((audio_ranks <= k).mean()) for k in (1, 5, 10)})
    if truth is not None:
        result["multi mAP@10"] = metrics.multi_relevance_map_at_k(similarity, np.asarray(truth.todense()).T,
                                                                  source=source)
    return Evaluation(result, similarity, ranks, query_similarity)


def mean_and_std(table: pd.DataFrame, by: list[str], columns=METRICS) -> pd.DataFrame:
    """Mean ± sample std (ddof 1) over seeds, in percent with two decimals, as the paper reports them;
    columns named "<metric> (%)".

    ddof 1, as the verdict's tables: a few seeds estimate the spread of all seeds. One seed has no
    spread to estimate, so its std reads "n/a" (NaN), never a reassuring 0.
    """
    grouped = table.groupby(by)[columns]
    std = grouped.std(ddof=1).mul(100).map(lambda v: "n/a" if np.isnan(v) else f"{v:.2f}")
    out = grouped.mean().mul(100).map(lambda v: f"{v:.2f}") + " ± " + std
    return out.rename(columns=lambda c: f"{c} (%)").assign(seeds=grouped.size()).reset_index()


def top_k_examples(evaluation: Evaluation, split: ClothoSplit, queries, k: int = 5, truth=None) -> pd.DataFrame:
    """For each query caption, its top-k clips. ``own clip``: ✓ for the clip the caption was written
    for (the protocol's one correct answer), ✗ for any other; ``truly matches`` (with ``truth``): ✓
    for every clip the caption truly describes, its own clip included, ✗ otherwise."""
    rows = []
    for q in queries:
        for rank, clip in enumerate(np.argsort(-evaluation.similarity[q], kind="stable")[:k], start=1):
            row = {"query": split.caption(int(q)), "rank": rank, "file_name": split.file_names[clip],
                   "score": round(float(evaluation.similarity[q, clip]), 4),
                   "own clip": "✓" if clip == q // CAPTIONS_PER_CLIP else "✗"}
            if truth is not None:
                row["truly matches"] = "✓" if truth[clip, q] else "✗"
            rows.append(row)
    return pd.DataFrame(rows)


def examples_in_words(examples: pd.DataFrame) -> str:
    """What the example table shows, counted: own clips, and other clips that truly match."""
    n, own = len(examples), int((examples["own clip"] == "✓").sum())
    text = f"{own} of the {n} results shown are the caption's own clip"
    if "truly matches" in examples:
        other = int(((examples["truly matches"] == "✓") & (examples["own clip"] == "✗")).sum())
        text += (f"; {other} other {'clip truly matches its' if other == 1 else 'clips truly match their'} "
                 f"caption, yet the protocol counts {'it as a mistake' if other == 1 else 'them as mistakes'}")
    return text + "."


def evaluation_key(row) -> str:
    """How notebook 04 names one evaluated model: folder and weights, e.g. ``member0 (last)``."""
    return f"{row['model']} ({row['weights']})"


def evaluate_profile(profile: str, split: ClothoSplit, split_name: str, batch_size: int, device: str,
                     truth=None, released=None, queries: list[str] | None = None
                     ) -> tuple[pd.DataFrame, dict[str, Evaluation]]:
    """Evaluate every trained model, best and last weights (and the released checkpoint, if given),
    and write metrics.csv; ``queries`` are free-text queries scored with every model as well.

    A run whose best epoch was its last has one set of weights under two names: it is evaluated
    once, and its ``last`` row says ``same_weights_as_best``.
    """
    rows, evaluations, by_weights = [], {}, {}
    models = runs.trained_models(profile, tuple(runs.WEIGHTS))
    if released is not None:
        path, model, config = released
        models.append({**runs.released_model(path), "loaded": (model, config)})
        del model
    for entry in models:
        # best and last weights of a run that was best in its last epoch are one and the same
        same = (entry["model"], saved_step(entry["checkpoint"])) if entry["weights"] in runs.WEIGHTS else None
        reused = same in by_weights
        if reused:
            evaluation = by_weights[same]
        else:
            model, config = entry.pop("loaded", None) or load_member(entry["checkpoint"])
            evaluation = evaluate(model, split, config.eval_seconds, batch_size, device, truth, queries,
                                  name=evaluation_key(entry))
            del model  # one paper-sized model in memory at a time
            by_weights[same] = evaluation
        evaluations[evaluation_key(entry)] = evaluation
        rows.append({**entry, "checkpoint": _relative(entry["checkpoint"], paths.project_root()),
                     "checkpoint_sha256": file_digest(entry["checkpoint"])[:16],
                     "selected_by": runs.WEIGHTS.get(entry["weights"], "the authors' release"),
                     # the last epoch was the best one: this row repeats the best row, it is no second result
                     "same_weights_as_best": reused and entry["weights"] != "best",
                     "split": split_name, "clips": split.n_clips, **evaluation.metrics})
    table = pd.DataFrame(rows)
    atomic_write_csv(paths.results_dir(profile) / "metrics.csv", table)
    return table, evaluations


def model_kinds(table: pd.DataFrame, stage2_dir: Path) -> pd.Series:
    """The kind of each row's model, as the verdict names them: ``i = j (stage 1)`` for the members of
    the students' architecture, ``i = j (<audio encoder>)`` for those of another family, the teacher
    kind of a stage-2 run (its ``run.json``; loss weights added when not the recipe's), ``released``
    for the authors' checkpoint."""
    members = verdict.member_kinds(Path(stage2_dir).parent / "stage1")

    def kind(row) -> str:
        stage = str(row["stage"])
        if stage == "1":
            return members.get(row["model"], verdict.STAGE1)
        if stage != "2":
            return stage
        run = json.loads((Path(stage2_dir) / row["model"] / runs.RECORD).read_text())["run"]
        weights = (run["sup_weight"], run["distill_weight"])
        if run["teachers"] != "control" and weights != (0.0, 1.0):
            return f"{run['teachers']} (sup {weights[0]:g}, dist {weights[1]:g})"
        return run["teachers"]

    return table.apply(kind, axis=1).rename("kind")


def compact_view(table: pd.DataFrame, columns=METRICS) -> pd.DataFrame:
    """metrics.csv as a reader needs it: model, weights and the text-to-audio metrics in percent;
    a last-epoch row that repeats the best weights says so instead of reading as a second result."""
    view = table[["model", "weights"]].copy()
    for column in columns:
        view[f"{column} (%)"] = (100 * table[column]).map(lambda v: f"{v:.2f}")
    same = table.get("same_weights_as_best", pd.Series(False, index=table.index)).fillna(False).astype(bool)
    view["note"] = np.where(same, "same weights as best", "")
    return view


def results_by_kind(table: pd.DataFrame, kinds: pd.Series, columns=METRICS) -> pd.DataFrame:
    """``mean_and_std`` per kind of model and weights, in the verdict's order of kinds."""
    out = mean_and_std(table.assign(kind=kinds), by=["kind", "weights"], columns=columns)
    order = {kind: i for i, kind in enumerate(verdict.kind_order(kinds))}
    weights = {w: i for i, w in enumerate([*runs.WEIGHTS, "released"])}
    return (out.assign(_k=out.kind.map(order), _w=out.weights.map(weights).fillna(len(weights)))
            .sort_values(["_k", "_w"]).drop(columns=["_k", "_w"]).reset_index(drop=True))


def _spread(n: int, width: float = 0.5) -> np.ndarray:
    """x offsets for n points side by side within ``width`` (a deterministic strip, no jitter)."""
    return np.zeros(1) if n == 1 else np.linspace(-width / 2, width / 2, n)


def plot_by_kind(table: pd.DataFrame, kinds: pd.Series, split_name: str, weights: str = "best", columns=METRICS):
    """One panel per metric: a bar per kind of model (mean over its models, percent), a dot per model.

    ``weights`` picks the rows (best-validation by default); the released checkpoint joins as its own kind.
    """
    chosen = table.assign(kind=kinds)[(table.weights == weights) | (table.weights == "released")]
    order = verdict.kind_order(chosen.kind)
    colors = verdict.kind_colors(order)
    counts = chosen.kind.value_counts()
    fig, axes = plt.subplots(1, len(columns), figsize=(3.0 * len(columns), 3.4))
    for ax, column in zip(np.atleast_1d(axes), columns):
        top = 0.0
        for x, kind in enumerate(order):
            values = 100 * chosen.loc[chosen.kind == kind, column].to_numpy()
            mean = values.mean()
            ax.bar(x, mean, 0.7, color=colors[kind], alpha=0.55)
            ax.scatter(x + _spread(len(values), 0.4), values, s=16, color="black", zorder=3)
            ax.text(x, max(mean, values.max()) * 1.02 + 0.5, f"{mean:.1f}", ha="center", va="bottom", fontsize=8)
            top = max(top, values.max())
        ax.set(title=column, ylabel="percent" if column == columns[0] else None, ylim=(0, top * 1.15 + 2),
               xticks=[], xlim=(-0.6, len(order) - 0.4))
        ax.grid(axis="x", visible=False)
    handles = [plt.Rectangle((0, 0), 1, 1, color=colors[kind], alpha=0.55, label=f"{kind}: {counts[kind]} "
                             f"{'model' if counts[kind] == 1 else 'models'}") for kind in order]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), frameon=False, fontsize=9)
    name = {"best": "best-validation", "last": "last-epoch"}.get(weights, weights)
    fig.suptitle(f"Text-to-audio retrieval, {split_name} split, {name} weights: "
                 f"bar = mean of a kind's models (value on top), dot = one model")
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    return fig


def rank_curves(evaluations: dict[str, Evaluation], table: pd.DataFrame, kinds: pd.Series,
                weights: str = "best", max_rank: int = 20) -> pd.DataFrame:
    """Per model of ``weights`` (and the released checkpoint) and rank r = 1..max_rank: the fraction
    of queries whose own clip ranks at r or better (R@r). Columns kind, model, rank, fraction."""
    rows = []
    for (_, row), kind in zip(table.iterrows(), kinds):
        if row["weights"] not in (weights, "released"):
            continue
        ranks = evaluations[evaluation_key(row)].ranks
        rows += [{"kind": kind, "model": row["model"], "rank": r, "fraction": float((ranks <= r).mean())}
                 for r in range(1, max_rank + 1)]
    return pd.DataFrame(rows, columns=["kind", "model", "rank", "fraction"])


def plot_rank_curves(curves: pd.DataFrame, n_clips: int, split_name: str, weights: str = "best"):
    """One line per kind: the mean over its models of the fraction of queries whose own clip ranks
    within r, r = 1..20; chance (r / clips) dashed."""
    order = verdict.kind_order(curves.kind)
    colors = verdict.kind_colors(order)
    markers = dict(zip(order, "osD^vP*X"))
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    mean = curves.groupby(["kind", "rank"], sort=False)["fraction"].mean()
    counts = curves.groupby("kind")["model"].nunique()
    for kind in order:
        line = mean.loc[kind]
        ax.plot(line.index, 100 * line.to_numpy(), marker=markers.get(kind, "o"), markersize=4, lw=1.6,
                color=colors[kind], label=f"{kind}, {counts[kind]} {'model' if counts[kind] == 1 else 'models'}")
    ranks = np.sort(curves["rank"].unique())
    ax.plot(ranks, 100 * np.minimum(ranks / n_clips, 1), ls="--", color="0.5", lw=1, label=f"chance ({n_clips} clips)")
    name = {"best": "best-validation", "last": "last-epoch"}.get(weights, weights)
    ax.set(xlabel="rank r", ylabel="queries with their own clip within rank r (%)", xlim=(0.5, ranks.max() + 0.5),
           ylim=(0, 100), xticks=[1, *range(5, int(ranks.max()) + 1, 5)],
           title=f"Where the own clip lands: {split_name} split, {name} weights, mean per kind")
    ax.legend(loc="best", fontsize=8)  # inside, where the lines leave room
    fig.tight_layout()
    return fig


def example_model(profile: str, table: pd.DataFrame) -> dict:
    """The model whose top results notebook 04 shows, chosen on the VALIDATION split (never the test
    split it is shown on): the SALSA student (stage 2 taught by an ensemble or by itself) of the
    latest grid with the highest validation mAP@10 of its best weights; without one, the stage-1
    member with the highest. Returns model, kind, the validation mAP@10 and how it was chosen."""
    candidates = []
    stage2 = runs.stage2_dir(profile)
    scored = set(table.model[table.stage.astype(str) == "2"])
    grid = runs.stage2_grid(stage2) if (stage2 / runs.GRID_LISTING).exists() else {}
    for model, (kind, _, _) in grid.items():
        if kind in runs.SALSA_KINDS and model in scored:
            record = json.loads((stage2 / model / runs.RECORD).read_text())
            candidates.append({"model": model, "kind": kind, "val mAP@10": record["val"]["mAP@10"],
                               "chosen as": "the SALSA student (ensemble, mixed or self teachers) with the highest "
                                            "validation mAP@10"})
    if not candidates:
        for model in table.model[table.stage.astype(str) == "1"].unique():
            record = json.loads((runs.stage1_dir(profile) / model / runs.RECORD).read_text())
            candidates.append({"model": model, "kind": verdict.STAGE1, "val mAP@10": record["val"]["mAP@10"],
                               "chosen as": "no SALSA student in this run: the stage-1 member with the highest "
                                            "validation mAP@10"})
    if not candidates:
        raise ValueError(f"no trained model of profile {profile!r} to show")
    return max(candidates, key=lambda c: c["val mAP@10"])  # the first of equals: grid order


def paper_comparison(table: pd.DataFrame) -> pd.DataFrame:
    """The paper's rows beside ours in percent, like with like: our last-epoch weights (the original
    tested the last epoch), the stage-2 recipe's teacher setting, the released checkpoint as such."""
    rows = []
    for _, ref in paper_reference().iterrows():
        stage = str(ref["stage"])
        kind = "released" if stage == "released" else "last"
        mine = table[(table["stage"].astype(str) == stage) & (table["weights"] == kind)]
        if stage == "2" and isinstance(ref["teachers"], str):  # e.g. self: self_from_member0
            mine = mine[mine["model"].astype(str).str.startswith(ref["teachers"] + "_")]
        row = {"system": ref["system"], "our weights": kind, "our runs": len(mine)}
        for metric in METRICS:
            row[f"{metric} paper"] = ref[metric]
            row[f"{metric} ours"] = round(100 * mine[metric].mean(), 2) if len(mine) else float("nan")
        rows.append(row)
    return pd.DataFrame(rows)


def _relative(path: Path, root: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(root.resolve()))
    except ValueError:
        return str(path)


def paper_reference() -> pd.DataFrame:
    """The paper's README numbers (method §10.1), with their source, in percent."""
    return pd.read_csv(Path(__file__).parent.parent / "reference" / "paper_results.csv")


def main(argv: list[str] | None = None) -> int:
    """Evaluate a checkpoint on a ClothoV2-layout folder and print (or save) the metrics."""
    parser = argparse.ArgumentParser(prog="python -m salsa_lib.evaluation", description=main.__doc__)
    parser.add_argument("--checkpoint", required=True, help="a best.ckpt of stage 1 or 2")
    parser.add_argument("--data-root", required=True, help="a folder in the ClothoV2 layout")
    parser.add_argument("--split", default="evaluation", help="split folder name (default: evaluation)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--skip-bad-clips", action="store_true")
    parser.add_argument("--json", type=Path, help="also write the metrics to this JSON file")
    args = parser.parse_args(argv)
    try:
        model, config = load_member(args.checkpoint)
        data = DataConfig(dataset="custom", data_root=args.data_root, skip_bad_clips=args.skip_bad_clips)
        location = data_sources.locate(data)
        split = load_split(location.root, args.split, cache_dir=location.cache_dir, skip_bad_clips=args.skip_bad_clips)
        result = evaluate(model, split, config.eval_seconds, args.batch_size, args.device,
                          name=str(args.checkpoint)).metrics
    except SalsaError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    result = {"checkpoint": str(args.checkpoint), "data_root": str(location.root), "split": args.split,
              "clips": split.n_clips, **result}
    if args.json:
        atomic_write_json(args.json, result)
    print(json.dumps(result, indent=2, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
