"""One training run's folder on disk: train-or-reuse by the run's parameters, set-aside copies, logs.

A folder holds ``run.json`` (the run's parameters, data fingerprints and metrics), ``checkpoints/``
(best.ckpt, last.ckpt) and ``logs/attempt<n>/metrics.csv`` (one per start, resumes included).
Stages 1 and 2 train through ``train_or_reuse``; the notebooks plot ``epoch_metrics``.
"""

from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from salsa_lib import provenance
from salsa_lib.core.checkpoints import saved_hparams
from salsa_lib.errors import DataError
from salsa_lib.files import atomic_write_json
from salsa_lib.runs import RECORD


def train_or_reuse(folder: Path, run: dict, train: Callable[[], dict], force: bool = False) -> dict:
    """Cache-or-compute for one training run folder, keyed by the run's parameters.

    Finished with the same ``run`` parameters: reused (unless ``force``: ``run_all.sh --force``). Interrupted
    with the same parameters: ``train`` resumes from ``last.ckpt``. Anything else already there is
    moved to ``<stage>/.previous/<name>-<n>`` (numbered; no earlier copy is ever deleted) and trained anew.
    """
    record_path = folder / RECORD
    if record_path.exists():
        record = json.loads(record_path.read_text())
        reusable = record.get("run") == run and (folder / record["best_checkpoint"]).exists()
        if reusable and not force:
            return record
        _move_aside(folder)
    elif (folder / "checkpoints" / "last.ckpt").exists() and saved_hparams(folder / "checkpoints" / "last.ckpt").get("run") != run:
        _move_aside(folder)
    start = time.perf_counter()
    metrics = train()
    record = {"folder": folder.name, "run": run, "best_checkpoint": "checkpoints/best.ckpt",
              "last_checkpoint": "checkpoints/last.ckpt", "seconds": round(time.perf_counter() - start, 1),
              **metrics, **provenance.run_metadata()}
    atomic_write_json(record_path, record)
    return record


def announce_finished(record: dict) -> None:
    """One line per finished run, where runs in worker processes cannot show progress bars (progress,
    not results: the notebook tables the scores once)."""
    print(f"{record['folder']}: trained in {record['seconds']:g} s", flush=True)  # its scores: the notebook's table


def attempts(folder: Path) -> int:
    """Each (re)start logs to its own CSV: Lightning's CSVLogger would delete the earlier one."""
    return len(list((folder / "logs").glob("attempt*")))


def epoch_metrics(folder: Path) -> pd.DataFrame:
    """Per-epoch training loss and validation metrics, across resumed attempts (latest attempt wins)."""
    frames = []
    for attempt in range(attempts(folder)):
        path = folder / "logs" / f"attempt{attempt}" / "metrics.csv"
        if path.exists():
            log = pd.read_csv(path)
            columns = [c for c in log.columns if c.startswith("val/") or c == "train/loss_epoch"]
            frames.append(log.groupby("epoch")[columns].max().dropna(how="all").reset_index())
    if not frames:
        # DataError: the run's files are missing; no setting would make them appear
        raise DataError(f"no training log under {folder / 'logs'}: has this run trained?")
    return pd.concat(frames).drop_duplicates("epoch", keep="last").sort_values("epoch").reset_index(drop=True)


def best_epoch_metrics(folder: Path) -> dict:
    """The epoch best.ckpt holds. A non-finite score in the log (an older run: today's validation
    refuses NaN embeddings) may have chosen it, so such a run is refused rather than reported."""
    per_epoch = epoch_metrics(folder).dropna(subset=["val/mAP@10"])
    infinite = per_epoch[~np.isfinite(per_epoch["val/mAP@10"])]
    if len(infinite):
        raise DataError(f"{folder}: validation mAP@10 is {infinite['val/mAP@10'].iloc[0]} at epoch "
                        f"{int(infinite['epoch'].iloc[0])} in the training log, so its best.ckpt may have been "
                        "chosen on it; train this run again (run_all.sh --force)")
    if per_epoch.empty:
        raise DataError(f"no validation mAP@10 in the training log under {folder / 'logs'}: did an epoch finish?")
    best = per_epoch.loc[per_epoch["val/mAP@10"].idxmax()]
    return {"best_epoch": int(best["epoch"]),
            "val": {c.removeprefix("val/"): round(float(best[c]), 6) for c in per_epoch.columns if c.startswith("val/")}}


def _move_aside(folder: Path) -> None:
    """Move a run to ``<stage>/.previous/<name>-<n>``, n one past the highest there, so the newest copy
    has the highest number and no earlier copy is replaced."""
    previous = folder.parent / ".previous"
    previous.mkdir(parents=True, exist_ok=True)
    numbered = re.compile(re.escape(folder.name) + r"-(\d+)")
    taken = [int(match[1]) for entry in previous.iterdir() if (match := numbered.fullmatch(entry.name))]
    target = previous / f"{folder.name}-{max(taken, default=0) + 1}"
    folder.rename(target)


def last_quarter_rise(curve: pd.DataFrame, column: str = "val/mAP@10") -> float:
    """How much ``column`` still rose over the last quarter of a run's epochs (``epoch_metrics``'s frame).

    The highest value after the epoch that ends the third quarter, minus the value at that epoch: for
    20 epochs, epochs 15 to 20, the paper's tail at the minimum learning rate. The learning rate is near
    its minimum there, so a flat tail is no proof of convergence (benchmarks/bench_stage1_length.py
    measures that). NaN for a single epoch: there is no rise to measure.
    """
    values = curve.dropna(subset=[column]).sort_values("epoch")[column].to_numpy()
    if len(values) < 2:
        return math.nan
    start = len(values) - 1 - math.ceil(len(values) / 4)
    return float(values[start + 1:].max() - values[start])
