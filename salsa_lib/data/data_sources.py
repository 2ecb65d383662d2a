"""Notebook 00's stage: get a data set in the ClothoV2 layout and cache its audio, per DataConfig.

Three sources, one layout, one loader: the generated synthetic benchmark (tiny profile), ClothoV2.1
(paper profile) and a user's own folder. Downstream stages only ever call ``load_splits``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from salsa_lib import paths
from salsa_lib.config import DATASETS, DataConfig
from salsa_lib.core import metrics
from salsa_lib.core.captions import preprocess_caption
from salsa_lib.data import synth
from salsa_lib.data.clotho import clotho_status, download_clotho
from salsa_lib.data.fake_clotho import install_fake_clotho
from salsa_lib.data.splits import SPLIT_FOLDERS, ClothoSplit, load_split
from salsa_lib.errors import DataError, SalsaError
from salsa_lib.files import atomic_write_json

SPLITS = SPLIT_FOLDERS  # the project's split names (train, val, test) -> ClothoV2's folder names


@dataclass(frozen=True)
class DatasetLocation:
    root: Path  # folder in the ClothoV2 layout
    cache_dir: Path  # decoded-audio caches for this data set


def locate(config: DataConfig) -> DatasetLocation:
    """Where the config's data set lives and where its audio cache goes."""
    if config.dataset == "custom":
        root = Path(config.data_root).expanduser().resolve()
        tag = "custom-" + hashlib.sha1(str(root).encode()).hexdigest()[:8]
        return DatasetLocation(root, paths.data_dir() / "cache" / tag)
    default = {"synthetic": "synthetic", "clotho": "clotho_v2", "fake-clotho": "fake_clotho_v2"}[config.dataset]
    root = Path(config.data_root).expanduser().resolve() if config.data_root else paths.data_dir() / default
    return DatasetLocation(root, paths.data_dir() / "cache" / config.dataset)


def fetch(config: DataConfig, progress: bool = True) -> DatasetLocation:
    """Generate or download the data set if it is not complete yet (a no-op when it is)."""
    location = locate(config)
    if config.dataset == "synthetic":
        counts = {SPLITS["train"]: config.n_train_clips, SPLITS["val"]: config.n_val_clips,
                  SPLITS["test"]: config.n_test_clips}
        synth.generate_synthetic_clotho(location.root, n_clips=counts, clip_seconds=config.clip_seconds,
                                  sample_rate=config.source_sample_rate, seed=config.synthetic_seed, progress=progress)
    elif config.dataset == "clotho":
        if config.download:
            download_clotho(location.root, progress=progress)
        else:
            incomplete = {s: st for s, st in clotho_status(location.root).items() if not st["complete"]}
            if incomplete:
                raise DataError(f"ClothoV2 is incomplete under {location.root} ({sorted(incomplete)}) "
                                "and download=False; set download=True or place the files by hand")
    elif config.dataset == "fake-clotho":
        counts = {SPLITS["train"]: config.n_train_clips, SPLITS["val"]: config.n_val_clips,
                  SPLITS["test"]: config.n_test_clips}
        install_fake_clotho(location.root, counts, seed=config.synthetic_seed)
    elif not location.root.is_dir():
        raise DataError(f"data_root {location.root} is not a folder (expected the ClothoV2 layout)")
    return location


def load_splits(config: DataConfig, splits=tuple(SPLITS), progress: bool = True) -> dict[str, ClothoSplit]:
    """The cached, validated splits (keys train/val/test); builds each audio cache on first use."""
    location = locate(config)
    return {
        name: load_split(location.root, SPLITS[name], cache_dir=location.cache_dir,
                         sample_rate=config.sample_rate, skip_bad_clips=config.skip_bad_clips,
                         progress=progress)
        for name in splits
    }


def split_statistics(splits: dict[str, ClothoSplit]) -> pd.DataFrame:
    """One row per split: the numbers a reader checks first (sizes, durations, caption lengths)."""
    rows = []
    for name, split in splits.items():
        durations = np.asarray(split.durations())
        words = [len(preprocess_caption(c).split()) for caps in split.captions for c in caps]
        vocabulary = {w for caps in split.captions for c in caps for w in preprocess_caption(c).split()}
        rows.append({
            "split": name, "clotho_split": split.split, "clips": split.n_clips,
            "captions": split.n_captions, "skipped_clips": len(split.skipped),
            "duration_min_s": durations.min(), "duration_mean_s": durations.mean(),
            "duration_max_s": durations.max(), "hours": durations.sum() / 3600,
            "caption_words_mean": float(np.mean(words)), "caption_words_max": int(np.max(words)),
            "vocabulary": len(vocabulary),
        })
    return pd.DataFrame(rows)


def load_truth(config: DataConfig, split: str):
    """The true correspondences (clips x captions) of ``split`` (train, val, test) on the synthetic set;
    None for data sets whose truth is unknown (ClothoV2, your own)."""
    if config.dataset != "synthetic":
        return None
    return synth.load_truth(locate(config).root, SPLITS[split])


def truth_and_chance(config: DataConfig, splits) -> tuple[pd.DataFrame, pd.DataFrame] | None:
    """On the synthetic set: per split, how ambiguous the captions are and the chance levels of the
    retrieval metrics (one row per split), and the true matches of every caption (one row per caption)."""
    if config.dataset != "synthetic":
        return None
    rows, matches_long = [], []
    for name in splits:
        stats = synth.truth_statistics(load_truth(config, name))
        matches = stats["matches_per_caption"]  # clips each caption truly describes
        matches_long.append(pd.DataFrame({"split": name, "true_matches": matches.astype(int)}))
        rows.append({"split": name, "clips": stats["n_clips"], "captions": stats["n_captions"],
                     "median_true_matches": stats["median_matches"],
                     "captions_matching_only_their_clip": stats["fraction_matching_one"],
                     "chance_mAP@10": metrics.chance_map_at_k(stats["n_clips"]),
                     "chance_multi_mAP@10": metrics.chance_multi_map_at_k(matches, stats["n_clips"])})
    return pd.DataFrame(rows), pd.concat(matches_long, ignore_index=True)


def data_config_path(profile: str) -> Path:
    return paths.results_dir(profile) / "data" / "data_config.json"


def save_data_config(config: DataConfig) -> Path:
    """Record which data set notebook 00 prepared, so later stages read the same one."""
    path = data_config_path(config.profile)
    atomic_write_json(path, config.to_params())
    return path


def load_data_config(profile: str) -> DataConfig:
    path = data_config_path(profile)
    if not path.exists():
        raise DataError(f"{path} is missing: run notebook 00 for profile {profile!r} first "
                        f"(./run_all.sh --profile {profile} --only 00)")
    return DataConfig.from_params(json.loads(path.read_text()))


def main(argv: list[str] | None = None) -> int:
    """Check a data set and build its audio cache before training: notebook 00 without the notebook.

    Exit 1 with a message naming the file and CSV line on bad input (or, with --skip-bad-clips, a
    report of what was left out); a cache that was already built is never replaced by a broken one.
    """
    parser = argparse.ArgumentParser(prog="python -m salsa_lib.data_sources", description=main.__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="custom", choices=sorted(DATASETS),
                        help="custom (default: a folder of yours in the ClothoV2 layout), synthetic or clotho")
    parser.add_argument("--data-root", default="", help="the ClothoV2-layout folder (required for custom)")
    parser.add_argument("--splits", default=",".join(SPLITS), help=f"comma-separated, of {', '.join(SPLITS)}")
    parser.add_argument("--skip-bad-clips", action="store_true",
                        help="leave unreadable or missing clips out and write <split>_skipped.csv instead of failing")
    parser.add_argument("--no-download", action="store_true", help="clotho: only use the files already on disk")
    args = parser.parse_args(argv)
    splits = tuple(s.strip() for s in args.splits.split(",") if s.strip())
    unknown = [s for s in splits if s not in SPLITS]
    if unknown or not splits:
        parser.error(f"--splits: unknown split(s) {unknown or args.splits!r}; choose from {', '.join(SPLITS)}")
    try:
        config = DataConfig(dataset=args.dataset, data_root=args.data_root, skip_bad_clips=args.skip_bad_clips,
                            download=not args.no_download)
        location = fetch(config, progress=sys.stderr.isatty())
        loaded = load_splits(config, splits=splits, progress=sys.stderr.isatty())
    except SalsaError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"data set: {location.root}\naudio cache: {location.cache_dir}")
    print(split_statistics(loaded).to_string(index=False))
    for name, split in loaded.items():
        if len(split.skipped):
            report = location.cache_dir / f"{split.split}_skipped.csv"
            print(f"skipped {len(split.skipped)} clip(s) of {name} ({split.split}); report: {report}", file=sys.stderr)
            for row in split.skipped.itertuples():
                print(f"  line {row.csv_row}: {row.file_name}: {row.reason}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
