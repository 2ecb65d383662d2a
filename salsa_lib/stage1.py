"""Stage 1: train the ensemble members, each in its own folder under results/<profile>/stage1/.

Cache-or-compute: a member that finished with the same parameters is not retrained (unless
``run_all.sh --force``); an interrupted one resumes from its last checkpoint; one trained with other
parameters, or forced, is moved to ``stage1/.previous/`` (never silently overwritten) and trained anew.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pandas as pd
import torch

from salsa_lib import paths, reports
from salsa_lib.config import DataConfig, Stage1Config
from salsa_lib.errors import ConfigError
from salsa_lib.files import atomic_write_json


def stage_dir(profile: str) -> Path:
    return paths.results_dir(profile) / "stage1"


def member_dir(profile: str, member: int) -> Path:
    return stage_dir(profile) / f"member{member}"


def train_members(config: Stage1Config, data: DataConfig, progress: bool = True) -> pd.DataFrame:
    """Train (or reuse) every member; returns and writes the members table."""
    from salsa_lib import datasets

    splits = datasets.load_splits(data, splits=("train", "val"), progress=progress)
    records = [train_member(config, k, splits["train"], splits["val"], progress) for k in range(config.members)]
    atomic_write_json(stage_dir(config.profile) / "members.json",
                      {"members": [r["folder"] for r in records], "params": config.to_params()})
    table = pd.DataFrame([{"member": r["member"], "seed": r["seed"], "best_epoch": r["best_epoch"],
                           **r["val"], "seconds": r["seconds"]} for r in records])
    reports.write_table(table, config.profile, "stage1_members")
    return table


def train_member(config: Stage1Config, member: int, train, val, progress: bool = True) -> dict:
    folder = member_dir(config.profile, member)
    record_path = folder / "member.json"
    params = {**config.to_params(), "seed": config.seed + member}
    if record_path.exists():
        record = _read_json(record_path)
        reusable = record.get("params") == params and (folder / record["best_checkpoint"]).exists()
        if reusable and not paths.force_recompute():
            return record  # finished with these parameters: nothing to do
        _move_aside(folder)
    elif (folder / "checkpoints" / "last.ckpt").exists() and _checkpoint_params(folder) != params:
        _move_aside(folder)
    start = time.perf_counter()
    metrics = _fit(Stage1Config.from_params(params), folder, train, val, progress)
    record = {"member": member, "folder": folder.name, "seed": params["seed"], "params": params,
              "best_checkpoint": "checkpoints/best.ckpt", "last_checkpoint": "checkpoints/last.ckpt",
              "seconds": round(time.perf_counter() - start, 1), **metrics, **reports.run_metadata()}
    atomic_write_json(record_path, record)
    return record


def _fit(config: Stage1Config, folder: Path, train, val, progress: bool) -> dict:
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger

    from salsa_lib.training import RetrievalModule, _EpochAwareCrops, make_loaders

    pl.seed_everything(config.seed, workers=True, verbose=False)
    train_set, train_loader, val_loader = make_loaders(config, train, val)
    module = RetrievalModule(config.to_params(), steps_per_epoch=len(train_loader))
    module.val_captions = val.captions
    checkpoint = ModelCheckpoint(dirpath=folder / "checkpoints", filename="best", monitor="val/mAP@10",
                                 mode="max", save_last=True, enable_version_counter=False)
    trainer = pl.Trainer(
        max_epochs=config.epochs, accelerator=config.accelerator, devices=config.devices,
        num_nodes=config.num_nodes, strategy=config.strategy, precision=config.precision,
        accumulate_grad_batches=config.accumulate_grad_batches, callbacks=[checkpoint, _EpochAwareCrops(train_set)],
        logger=CSVLogger(folder, name="logs", version=f"attempt{_attempts(folder)}"), log_every_n_steps=1,
        enable_progress_bar=progress, enable_model_summary=False, num_sanity_val_steps=0,
    )
    last = folder / "checkpoints" / "last.ckpt"
    resume = str(last) if config.resume and last.exists() else None
    trainer.fit(module, train_loader, val_loader, ckpt_path=resume, weights_only=True)
    return best_epoch_metrics(folder)


def _attempts(folder: Path) -> int:
    """Each (re)start logs to its own CSV: Lightning's CSVLogger would delete the earlier one."""
    return len(list((folder / "logs").glob("attempt*")))


def epoch_metrics(folder: Path) -> pd.DataFrame:
    """Per-epoch training loss and validation metrics, across resumed attempts (latest attempt wins)."""
    frames = []
    for attempt in range(_attempts(folder)):
        path = folder / "logs" / f"attempt{attempt}" / "metrics.csv"
        if path.exists():
            log = pd.read_csv(path)
            columns = [c for c in log.columns if c.startswith("val/") or c == "train/loss_epoch"]
            frames.append(log.groupby("epoch")[columns].max().dropna(how="all").reset_index())
    if not frames:
        raise ConfigError(f"no training log under {folder / 'logs'}: has this member trained?")
    return pd.concat(frames).drop_duplicates("epoch", keep="last").sort_values("epoch").reset_index(drop=True)


def best_epoch_metrics(folder: Path) -> dict:
    per_epoch = epoch_metrics(folder).dropna(subset=["val/mAP@10"])
    best = per_epoch.loc[per_epoch["val/mAP@10"].idxmax()]
    return {"best_epoch": int(best["epoch"]),
            "val": {c.removeprefix("val/"): float(best[c]) for c in per_epoch.columns if c.startswith("val/")}}


def load_member(checkpoint: str | Path):
    """The DualEncoder stored in a checkpoint, rebuilt from the parameters saved with it."""
    from salsa_lib.model import build_dual_encoder

    checkpoint = Path(checkpoint)
    if not checkpoint.exists():
        raise ConfigError(f"checkpoint {checkpoint} does not exist (train stage 1 first: notebook 01)")
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    try:
        config = Stage1Config.from_params(state["hyper_parameters"]["params"])
    except (KeyError, TypeError) as err:
        raise ConfigError(f"{checkpoint} is not a checkpoint of this project (no saved parameters)") from err
    model = build_dual_encoder(config)
    weights = {k.removeprefix("model."): v for k, v in state["state_dict"].items()}
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise ConfigError(f"{checkpoint} does not fit the model its parameters describe: "
                          f"missing {sorted(missing)[:10]}, unexpected {sorted(unexpected)[:10]}")
    return model.eval(), config


def _checkpoint_params(folder: Path) -> dict | None:
    state = torch.load(folder / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    return state.get("hyper_parameters", {}).get("params")


def _move_aside(folder: Path) -> None:
    previous = folder.parent / ".previous" / folder.name
    shutil.rmtree(previous, ignore_errors=True)
    previous.parent.mkdir(parents=True, exist_ok=True)
    folder.rename(previous)


def _read_json(path: Path) -> dict:
    import json

    return json.loads(path.read_text())
