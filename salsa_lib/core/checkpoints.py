"""Load a trained model from a checkpoint without the training framework (search needs no Lightning).

A checkpoint of this project holds ``hyper_parameters.params`` (the Stage1Config fields) and a
``state_dict`` whose keys carry Lightning's ``model.`` prefix; the DualEncoder is rebuilt from the
parameters and the weights loaded strictly, with ``torch.load(weights_only=True)`` (no pickled code).
A file that is missing, unreadable or not a fitting checkpoint raises DataError (the file is wrong,
not a setting); saved parameters that are unknown or ill-typed raise ``from_params``' ConfigError.
"""

from __future__ import annotations

from pathlib import Path

import torch

from salsa_lib.config import Stage1Config
from salsa_lib.core.model import build_dual_encoder
from salsa_lib.errors import DataError


def _safe_load(checkpoint: Path):
    """``torch.load(weights_only=True)``, memory-mapped where the file allows it: last.ckpt also holds
    optimizer state (GBs at the paper's size) that is never read here."""
    try:
        return torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as err:
        if "mmap can only be used" not in str(err):
            raise
        return torch.load(checkpoint, map_location="cpu", weights_only=True)  # legacy (non-zip) format


def load_member(checkpoint: str | Path):
    """The DualEncoder stored in a checkpoint, rebuilt from the parameters saved with it."""
    checkpoint = Path(checkpoint)
    if not checkpoint.exists():
        raise DataError(f"checkpoint {checkpoint} does not exist (train stage 1 first: notebook 01)")
    try:
        state = _safe_load(checkpoint)
    except Exception as err:  # noqa: BLE001 - torch.load of arbitrary bytes raises almost any type
        if "Weights only load failed" in str(err):  # pickled objects, code included, are refused
            # DataError, not ConfigError: unlike the released checkpoint, no setting makes it loadable
            raise DataError(f"{checkpoint} contains pickled objects that a safe load refuses; "
                            "it is not a checkpoint of this project") from err
        detail = (str(err).strip().splitlines() or [""])[0][:120]
        raise DataError(f"{checkpoint} is not a readable checkpoint ({type(err).__name__}: {detail})") from err
    if not isinstance(state, dict):
        raise DataError(f"{checkpoint} holds a {type(state).__name__}, not a checkpoint of this project")
    try:
        config = Stage1Config.from_params(state["hyper_parameters"]["params"])
        weights = {k.removeprefix("model."): v for k, v in state["state_dict"].items()}
    except (KeyError, TypeError, AttributeError) as err:
        raise DataError(f"{checkpoint} is not a checkpoint of this project (no saved parameters "
                        "and weights)") from err
    model = build_dual_encoder(config)
    try:
        missing, unexpected = model.load_state_dict(weights, strict=False)
    except RuntimeError as err:  # a tensor of the wrong shape
        raise DataError(f"{checkpoint} does not fit the model its parameters describe: "
                        f"{str(err).splitlines()[-1].strip()[:200]}") from err
    if missing or unexpected:
        raise DataError(f"{checkpoint} does not fit the model its parameters describe: "
                        f"missing {sorted(missing)[:10]}, unexpected {sorted(unexpected)[:10]}")
    return model.eval(), config


def _saved(checkpoint: str | Path, key: str, what: str):
    """One entry of a training checkpoint, memory-mapped (its weights are not read)."""
    try:
        return _safe_load(Path(checkpoint))[key]
    except (OSError, RuntimeError, KeyError, TypeError) as err:
        raise DataError(f"{checkpoint}: no readable {what} ({type(err).__name__}: {err})") from err


def saved_hparams(checkpoint: str | Path) -> dict:
    """What a training checkpoint was saved with: the model's ``params`` and the run's identity (``run``)."""
    return _saved(checkpoint, "hyper_parameters", "training parameters")


def saved_config(checkpoint: str | Path) -> Stage1Config:
    """The parameters a checkpoint of this project was trained with."""
    params = saved_hparams(checkpoint).get("params")
    if not isinstance(params, dict):
        raise DataError(f"{checkpoint}: no saved model parameters")
    return Stage1Config.from_params(params)


def saved_step(checkpoint: str | Path) -> int:
    """The optimizer step after which a training checkpoint was written: equal steps, equal weights."""
    return int(_saved(checkpoint, "global_step", "training step"))
