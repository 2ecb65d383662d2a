"""Stage 2: initialise from a stage-1 member and distil the estimated correspondences (spec 7.3).

The student sees, for every batch, the teachers' in-batch ensemble logits C_bar / tau as soft targets
(normalised within the batch in both directions). Teachers come from stored embeddings, so no
teacher network runs during training.
"""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import pandas as pd
import torch

from salsa_lib import correspondences, paths, reports, stage1
from salsa_lib.config import DataConfig, Stage1Config, Stage2Config
from salsa_lib.data import split_fingerprint
from salsa_lib.files import file_digest
from salsa_lib.losses import contrastive_loss, distillation_loss
from salsa_lib.training import RetrievalModule, checkpoint_hparams, fit, make_loaders, train_or_reuse


class DistillationModule(RetrievalModule):
    """The stage-1 module with L = sup_weight * L_sup + distill_weight * L_dist."""

    def __init__(self, params: dict, steps_per_epoch: int, run: dict, teacher_audio: torch.Tensor,
                 teacher_captions: torch.Tensor, sup_weight: float, distill_weight: float):
        super().__init__(params, steps_per_epoch, run)
        # not persistent: checkpoints hold the student only; the run record names the teachers
        self.register_buffer("teacher_audio", teacher_audio, persistent=False)
        self.register_buffer("teacher_captions", teacher_captions, persistent=False)
        self.sup_weight, self.distill_weight = sup_weight, distill_weight

    def loss(self, logits: torch.Tensor, batch: dict) -> torch.Tensor:
        teacher = correspondences.ensemble_logits(self.teacher_audio[:, batch["audio_idx"]],
                                                  self.teacher_captions[:, batch["idx"]], float(self.model.tau))
        loss = self.distill_weight * distillation_loss(logits, teacher)
        if self.sup_weight:  # applied once (the original squared it, spec 12 item 1)
            loss = loss + self.sup_weight * contrastive_loss(logits, batch["audio_idx"])
        return loss


def run_dir(config: Stage2Config) -> Path:
    """One folder per teacher set, initial member and loss weights (so a control run keeps its own)."""
    name = f"{config.teachers}_from_member{config.init_member}"
    if (config.sup_weight, config.distill_weight) != (0.0, 1.0):
        name += f"_sup{config.sup_weight:g}_dist{config.distill_weight:g}"
    return paths.results_dir(config.profile) / "stage2" / name


def teacher_names(config: Stage2Config) -> list[str] | None:
    return [f"member{config.init_member}"] if config.teachers == "self" else None  # None: all listed members


def train(config: Stage2Config, data: DataConfig, progress: bool = True) -> dict:
    """Train (or reuse) the stage-2 model of ``config``; returns its run record."""
    from salsa_lib import datasets

    splits = datasets.load_splits(data, splits=("train", "val"), progress=progress)
    train_split, val_split = splits["train"], splits["val"]
    init_folder = stage1.member_dir(config.profile, config.init_member)
    correspondences.member_folders(config.profile, [init_folder.name])  # exists and is listed
    teachers = correspondences.member_folders(config.profile, teacher_names(config))
    payloads = [correspondences.load_embeddings(correspondences.embeddings_path(f), train_split,
                                                f / "checkpoints" / "best.ckpt") for f in teachers]
    init_checkpoint = init_folder / "checkpoints" / "best.ckpt"
    verified = {f.name: p["checkpoint_sha256"] for f, p in zip(teachers, payloads)}  # hashed by load_embeddings
    run = {**config.to_params(), "teacher_members": [f.name for f in teachers],
           "teacher_checkpoints": [p["checkpoint_sha256"] for p in payloads],
           "init_checkpoint": verified.get(init_folder.name) or file_digest(init_checkpoint),
           "data": {"train": split_fingerprint(train_split), "val": split_fingerprint(val_split)}}

    def fit_run() -> dict:
        pl.seed_everything(config.seed, workers=True, verbose=False)
        member_params = checkpoint_hparams(init_checkpoint)["params"]
        params = {**member_params, **{k: v for k, v in config.to_params().items() if k in Stage1Config.field_names()}}
        student = Stage1Config.from_params(params)
        train_set, train_loader, val_loader = make_loaders(student, train_split, val_split)
        audio, captions = correspondences.stack_teachers(payloads)
        module = DistillationModule(params, len(train_loader), run, audio, captions,
                                    config.sup_weight, config.distill_weight)
        initial, _ = stage1.load_member(init_checkpoint)
        module.model.load_state_dict(initial.state_dict())  # strict: same architecture, tau included
        module.model.train()
        module.val_captions = val_split.captions
        return fit(module, run_dir(config), train_set, train_loader, val_loader, progress)

    return train_or_reuse(run_dir(config), run, fit_run)


def comparison_table(config: Stage2Config) -> pd.DataFrame:
    """Validation metrics of the stage-1 members and of every stage-2 run of the profile, side by side."""
    import json

    from salsa_lib.evaluation import models_to_evaluate

    rows = []
    for entry in models_to_evaluate(config.profile):
        record = json.loads((Path(entry["checkpoint"]).parent.parent / "run.json").read_text())
        rows.append({**{k: v for k, v in entry.items() if k != "checkpoint"}, "checkpoint": "best", **record["val"]})
    table = pd.DataFrame(rows)
    reports.write_table(table, config.profile, "stage2_vs_stage1_validation")
    return table
