"""Evaluation on the ClothoV2 protocol (spec section 9) and the tables and figures of notebook 04.

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

import numpy as np
import pandas as pd
import torch

from salsa_lib import data_sources, metrics, paths, runs
from salsa_lib.checkpoints import load_member, saved_step
from salsa_lib.config import DataConfig
from salsa_lib.embedding import embed_split
from salsa_lib.errors import SalsaError
from salsa_lib.files import atomic_write_csv, atomic_write_json, file_digest
from salsa_lib.splits import CAPTIONS_PER_CLIP, ClothoSplit, caption_clips, load_split

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
    """Mean ± sample std (ddof 1) over seeds, in percent, as the paper reports them.

    ddof 1, as the verdict's tables: a few seeds estimate the spread of all seeds. One seed has no
    spread to estimate, so its std reads "n/a" (NaN), never a reassuring 0.
    """
    grouped = table.groupby(by)[columns]
    std = grouped.std(ddof=1).mul(100).round(2).map(lambda v: "n/a" if np.isnan(v) else str(v))
    out = grouped.mean().mul(100).round(2).astype(str) + " ± " + std
    return out.assign(seeds=grouped.size()).reset_index()


def top_k_examples(evaluation: Evaluation, split: ClothoSplit, queries, k: int = 5, truth=None) -> pd.DataFrame:
    """For each query caption, its top-k clips with ✓ (its own clip) / ✗, and truly-matching flags."""
    rows = []
    for q in queries:
        for rank, clip in enumerate(np.argsort(-evaluation.similarity[q])[:k], start=1):
            row = {"query": split.caption(int(q)), "rank": rank, "file_name": split.file_names[clip],
                   "score": float(evaluation.similarity[q, clip]), "associated": "✓" if clip == q // CAPTIONS_PER_CLIP else "✗"}
            if truth is not None:
                row["truly matches"] = "yes" if truth[clip, q] else "no"
            rows.append(row)
    return pd.DataFrame(rows)


def evaluation_key(row) -> str:
    """How notebook 04 names one evaluated model: folder and weights, e.g. ``member0 (last)``."""
    return f"{row['model']} ({row['weights']})"


def evaluate_profile(profile: str, split: ClothoSplit, split_name: str, batch_size: int, device: str,
                     truth=None, released=None, queries: list[str] | None = None
                     ) -> tuple[pd.DataFrame, dict[str, Evaluation]]:
    """Evaluate every trained model, best and last weights (and the released checkpoint, if given),
    and write metrics.csv; ``queries`` are free-text queries scored with every model as well."""
    rows, evaluations, by_weights = [], {}, {}
    models = runs.trained_models(profile, tuple(runs.WEIGHTS))
    if released is not None:
        path, model, config = released
        models.append({**runs.released_model(path), "loaded": (model, config)})
        del model
    for entry in models:
        # best and last weights of a run that was best in its last epoch are one and the same
        same = (entry["model"], saved_step(entry["checkpoint"])) if entry["weights"] in runs.WEIGHTS else None
        if same in by_weights:
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
                     "split": split_name, "clips": split.n_clips, **evaluation.metrics})
    table = pd.DataFrame(rows)
    atomic_write_csv(paths.results_dir(profile) / "metrics.csv", table)
    return table, evaluations


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
    """The paper's README numbers (spec 10.1), with their source, in percent."""
    return pd.read_csv(Path(__file__).parent / "reference" / "paper_results.csv")


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
