"""Stage 1: train the ensemble members, each in its own folder under results/<profile>/stage1/.

Member k trains with seed + k. Reuse, resume and move-aside rules: ``training.train_or_reuse``.
"""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import pandas as pd
import torch

from salsa_lib import paths, pretraining, reports
from salsa_lib.config import DataConfig, Stage1Config
from salsa_lib.data import split_fingerprint
from salsa_lib.errors import ConfigError
from salsa_lib.files import atomic_write_json
from salsa_lib.training import RetrievalModule, fit, make_loaders, train_or_reuse


def stage_dir(profile: str) -> Path:
    return paths.results_dir(profile) / "stage1"


def member_dir(profile: str, member: int) -> Path:
    return stage_dir(profile) / f"member{member}"


def train_members(config: Stage1Config, data: DataConfig, progress: bool = True) -> pd.DataFrame:
    """Train (or reuse) every member; returns and writes the members table."""
    from salsa_lib import datasets

    splits = datasets.load_splits(data, splits=("train", "val"), progress=progress)
    pretrained = pretraining.pretrain_or_reuse(config, data, progress) if config.pretrain_clips else None
    records = [train_member(config, k, splits["train"], splits["val"], progress, pretrained)
               for k in range(config.members)]
    atomic_write_json(stage_dir(config.profile) / "members.json",
                      {"members": [r["folder"] for r in records], "params": config.to_params()})
    table = pd.DataFrame([{"member": k, "seed": r["run"]["seed"], "best_epoch": r["best_epoch"],
                           **r["val"], "seconds": r["seconds"]} for k, r in enumerate(records)])
    reports.write_table(table, config.profile, "stage1_members")
    return table


def train_member(config: Stage1Config, member: int, train, val, progress: bool = True,
                 pretrained: dict | None = None) -> dict:
    """``pretrained``: the record of ``pretraining.pretrain_or_reuse``, whose weights start the PaSST."""
    params = {**config.to_params(), "seed": config.seed + member}
    # the data are part of the run's identity: a regenerated data set must not reuse old members
    run = {**params, "data": {"train": split_fingerprint(train), "val": split_fingerprint(val)}}
    if pretrained is not None:  # and so are the pretrained weights it starts from
        run["pretrained_audio_sha256"] = pretrained["checkpoint_sha256"]

    def fit_run() -> dict:
        pl.seed_everything(params["seed"], workers=True, verbose=False)
        member_config = Stage1Config.from_params(params)
        train_set, train_loader, val_loader = make_loaders(member_config, train, val)
        module = RetrievalModule(params, steps_per_epoch=len(train_loader), run=run)
        if pretrained is not None:
            pretraining.load_pretrained(module.model.audio_encoder.passt, config.profile, pretrained)
        module.val_captions = val.captions
        return fit(module, member_dir(config.profile, member), train_set, train_loader, val_loader, progress)

    return train_or_reuse(member_dir(config.profile, member), run, fit_run)


def load_member(checkpoint: str | Path):
    """The DualEncoder stored in a checkpoint, rebuilt from the parameters saved with it."""
    from salsa_lib.model import build_dual_encoder

    checkpoint = Path(checkpoint)
    if not checkpoint.exists():
        raise ConfigError(f"checkpoint {checkpoint} does not exist (train stage 1 first: notebook 01)")
    try:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch.load of arbitrary bytes raises almost any type
        if "Weights only load failed" in str(err):  # pickled objects, code included, are refused
            raise ConfigError(f"{checkpoint} contains pickled objects that a safe load refuses; "
                              "it is not a checkpoint of this project") from err
        detail = (str(err).strip().splitlines() or [""])[0][:120]
        raise ConfigError(f"{checkpoint} is not a readable checkpoint ({type(err).__name__}: {detail})") from err
    if not isinstance(state, dict):
        raise ConfigError(f"{checkpoint} holds a {type(state).__name__}, not a checkpoint of this project")
    try:
        config = Stage1Config.from_params(state["hyper_parameters"]["params"])
        weights = {k.removeprefix("model."): v for k, v in state["state_dict"].items()}
    except (KeyError, TypeError, AttributeError) as err:
        raise ConfigError(f"{checkpoint} is not a checkpoint of this project (no saved parameters "
                          "and weights)") from err
    model = build_dual_encoder(config)
    try:
        missing, unexpected = model.load_state_dict(weights, strict=False)
    except RuntimeError as err:  # a tensor of the wrong shape
        raise ConfigError(f"{checkpoint} does not fit the model its parameters describe: "
                          f"{str(err).splitlines()[-1].strip()[:200]}") from err
    if missing or unexpected:
        raise ConfigError(f"{checkpoint} does not fit the model its parameters describe: "
                          f"missing {sorted(missing)[:10]}, unexpected {sorted(unexpected)[:10]}")
    return model.eval(), config
