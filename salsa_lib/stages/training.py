"""Training on Lightning: the paper's optimiser and schedule, checkpoints, resume, DDP (method §8).

The losses and metrics are pure functions elsewhere; this module only wires them into a
LightningModule. Stage 2 reuses it and only swaps the loss (``RetrievalModule.loss``).
"""

from __future__ import annotations

import math
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from torch.distributed.nn.functional import all_gather
from torch.utils.data import DataLoader, RandomSampler

from salsa_lib.config import Stage1Config
from salsa_lib.core.losses import contrastive_loss
from salsa_lib.core.metrics import text_to_audio_metrics
from salsa_lib.core.model import build_dual_encoder
from salsa_lib.data.splits import CAPTIONS_PER_CLIP, AudioCaptionDataset, ClipDataset, ClothoSplit, caption_clips
from salsa_lib.errors import NonFiniteError
from salsa_lib.quiet import silence_third_party_noise
from salsa_lib.stages import precision
from salsa_lib.stages.run_folders import attempts, best_epoch_metrics
from salsa_lib.stages.step_cache import StepCache

LR_FIELDS = {"audio_encoder": "lr_audio_encoder", "text_encoder": "lr_text_encoder",
             "audio_projection": "lr_audio_projection", "text_projection": "lr_text_projection"}


def learning_rate(epoch: float, lr: float, config: Stage1Config) -> float:
    """The closed form of method §8: linear warmup, cosine from lr to min_lr, then constant min_lr.

    ``epoch`` is fractional (current epoch + batch / batches per epoch), so the schedule moves per step.
    """
    if epoch < config.warmup_epochs:
        return lr * epoch / config.warmup_epochs
    if epoch < config.rampdown_start:
        return lr
    if epoch < config.rampdown_stop:
        progress = (epoch - config.rampdown_start) / (config.rampdown_stop - config.rampdown_start)
        return config.min_lr + (lr - config.min_lr) * 0.5 * (1 + math.cos(math.pi * progress))
    return config.min_lr


class RetrievalModule(pl.LightningModule):
    """The dual encoder plus its loss, optimiser, schedule and validation metrics."""

    def __init__(self, params: dict, steps_per_epoch: int, run: dict | None = None):
        super().__init__()
        # plain dicts of literals: checkpoints stay loadable with weights_only=True. ``params`` rebuild
        # the model; ``run`` identifies the training run (stage 2 adds its teachers) for safe resuming
        self.save_hyperparameters({"params": params, "steps_per_epoch": steps_per_epoch, "run": run or params})
        self.config = Stage1Config.from_params(params)
        self.steps_per_epoch = steps_per_epoch
        self.model = build_dual_encoder(self.config).train()  # from_pretrained leaves dropout off
        self._val_audio, self._val_text, self._val_ids = [], [], []
        self.val_captions: list[list[str]] | None = None  # set by fit_member: captions per val clip
        # set by ``fit``: what the per-run caches are built from (None: compute everything every step)
        self.train_set, self.val_split, self.val_samples = None, None, 0
        self._train_cache = self._val_cache = None
        self.name = "this run"  # set by ``fit``: the run's folder, for error messages
        self._steps = self._skipped = 0  # this epoch's training steps, and those with a non-finite loss
        self.skipped_steps = 0  # over the whole run (this attempt)
        self._drop_gradients = False

    def loss(self, logits: torch.Tensor, batch: dict) -> torch.Tensor:
        return contrastive_loss(logits, batch["audio_idx"])

    def on_train_start(self) -> None:
        """Compute once what every step would recompute (see ``StepCache``); on the training device."""
        limit = self.config.spectrogram_cache_gb * 1024**3
        if self.train_set is not None:
            self._train_cache = StepCache.build(self.model, self.train_set.split, self.train_set.n_samples,
                                                self.train_set.captions, limit, text=self.config.text_step_cache)
            if self.val_split is not None:
                self._val_cache = StepCache.build(self.model, self.val_split, self.val_samples,
                                                  [c for clip in self.val_split.captions for c in clip], limit)

    def _embed(self, batch: dict, cache: "StepCache | None", caption_ids, captions) -> tuple:
        power = cache.power_of(batch["audio_idx"], batch["audio"].device) if cache else None
        audio = self.model.embed_audio(batch["audio"], batch["audio_length"], power=power)
        if cache is not None and cache.text is not None:
            text = self.model.project_text(self.model.text_encoder.forward_from_states(cache.text_of(caption_ids)))
            text = torch.nn.functional.normalize(text, dim=-1)
        else:
            text = self.model.embed_text(captions)
        return audio, text

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        audio, text = self._embed(batch, self._train_cache, batch["idx"], batch["caption"])
        if self.trainer.world_size > 1:  # the in-batch loss needs the global batch on every rank
            audio, text, batch = _gather_global_batch(audio, text, batch)
        loss = self.loss(self.model.logits(audio, text), batch)
        self._steps += 1
        finite = bool(torch.isfinite(loss))  # the same on every rank: the loss is computed on the global batch
        # summed per epoch in the log, where the epoch's loss is (a resumed run does not log an epoch twice)
        self.log("train/skipped_steps", float(not finite), on_step=False, on_epoch=True, reduce_fx="sum", batch_size=1)
        if not finite:
            self._skipped += 1
            self._drop_gradients = True
            return loss  # Lightning refuses a None under DDP; its NaN gradients are dropped before the step
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=len(audio))
        return loss

    def on_before_optimizer_step(self, optimizer) -> None:
        """Skip the step whose gradients come from a non-finite loss: AdamW leaves parameters without
        gradients untouched, where NaN gradients would make every weight NaN (fp32 and bf16 have no
        GradScaler to skip it; under 16-mixed the scaler skips it too)."""
        if self._drop_gradients:
            optimizer.zero_grad(set_to_none=True)
            self._drop_gradients = False

    def on_train_epoch_end(self) -> None:
        """Say how many steps a non-finite loss skipped; stop when no step of the epoch trained."""
        steps, skipped = self._steps, self._skipped
        self._steps = self._skipped = 0
        self.skipped_steps += skipped
        if not skipped:
            return
        epoch = self.current_epoch
        if skipped == steps:
            raise NonFiniteError(f"{self.name}: the loss was NaN or infinite in all {steps} training steps of epoch "
                                 f"{epoch} (precision {self.trainer.precision}), so nothing trained; look for "
                                 "NaN or inf in the inputs, lower the learning rates or train in fp32")
        print(f"{self.name}: epoch {epoch} skipped {skipped} of {steps} training steps whose loss was NaN or "
              "infinite", flush=True)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        captions = [c for i in batch["audio_idx"].tolist() for c in self.val_captions[i]]
        caption_ids = [CAPTIONS_PER_CLIP * i + k for i in batch["audio_idx"].tolist() for k in range(CAPTIONS_PER_CLIP)]
        audio, text = self._embed(batch, self._val_cache, caption_ids, captions)
        self._val_audio.append(audio.float())
        self._val_text.append(text.float())
        self._val_ids.append(batch["audio_idx"])

    def on_validation_epoch_end(self) -> None:
        audio, text, ids = (torch.cat(x) for x in (self._val_audio, self._val_text, self._val_ids))
        self._val_audio, self._val_text, self._val_ids = [], [], []
        if self.trainer.world_size > 1:
            audio, text, ids = (self.all_gather(x).flatten(0, 1) for x in (audio, text, ids))
        ids, first = np.unique(ids.cpu().numpy(), return_index=True)  # DDP samplers pad with repeats
        audio = audio[first].cpu().numpy()
        text = text.reshape(-1, 5, text.shape[-1])[first].reshape(-1, text.shape[-1]).cpu().numpy()
        # NaN embeddings would rank at 0 and give an infinite mAP@10 that ModelCheckpoint keeps as best.ckpt
        source = f"{self.name} at epoch {self.current_epoch} on the validation split"
        metrics = text_to_audio_metrics(text, audio, caption_clips(len(ids)), source)
        for name, value in metrics.items():
            self.log(f"val/{name}", value, prog_bar=name == "mAP@10", sync_dist=False)

    def configure_optimizers(self):
        groups = self.model.parameter_groups()
        base = [getattr(self.config, LR_FIELDS[name]) for name in groups]
        optimizer = torch.optim.AdamW(
            [{"params": params, "lr": lr, "name": name} for (name, params), lr in zip(groups.items(), base)],
            betas=(0.9, 0.999), eps=1e-8, weight_decay=self.config.weight_decay)
        per_step = [self._schedule(lr) for lr in base]
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, per_step)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def _schedule(self, lr: float):
        steps = self.steps_per_epoch / self.config.accumulate_grad_batches
        return lambda step: learning_rate(step / steps, lr, self.config) / lr


def manual_step(module: RetrievalModule, optimizer: torch.optim.Optimizer, batch: dict, cache: StepCache | None,
                resolved_precision: str) -> torch.Tensor:
    """One optimiser step as Lightning runs ``training_step`` on one CPU device, without a Trainer: autocast
    (for ``resolved_precision``) around the forward pass only, then backward and the optimiser's step.

    For the test that proves training learns and the benchmark that times notebook 01's step: both must
    time and test the step training takes, not a copy of it.
    """
    dtype = precision.autocast_dtype(resolved_precision)
    module.train()
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
        audio, text = module._embed(batch, cache, batch["idx"], batch["caption"])
        loss = module.loss(module.model.logits(audio, text), batch)
    loss.backward()
    optimizer.step()
    return loss.detach()


def _gather_global_batch(audio, text, batch):
    """All-gather embeddings with gradients (each rank then computes the same global loss)."""
    audio, text = torch.cat(all_gather(audio)), torch.cat(all_gather(text))
    gathered = {k: torch.cat(all_gather(v)) for k, v in batch.items() if isinstance(v, torch.Tensor) and v.dim() == 1}
    return audio, text, {**batch, **gathered}


class _EpochAwareCrops(pl.Callback):
    """Each epoch's randomness is a function of (seed, epoch): reproducible across runs and resumes.

    That covers the crops (the dataset's epoch), the shuffle order (the train sampler's own generator)
    and the global torch RNG (PaSST patchout, the mel fmin/fmax jitter, text dropout). Lightning does
    not store RNG states in checkpoints, so without the reseeding a resumed run would draw differently
    from an uninterrupted one. The hook runs before the epoch's first batch is drawn (the sampler is
    lazy with ``num_workers=0``).
    """

    def __init__(self, dataset: AudioCaptionDataset):
        self.dataset = dataset

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        epoch = trainer.current_epoch
        self.dataset.set_epoch(epoch)
        global_seed, shuffle_seed = np.random.SeedSequence([self.dataset.seed, epoch]).generate_state(2)
        torch.manual_seed(int(global_seed))
        generator = getattr(getattr(trainer.train_dataloader, "sampler", None), "generator", None)
        if isinstance(generator, torch.Generator):  # under DDP Lightning's DistributedSampler replaces it
            generator.manual_seed(int(shuffle_seed))


def make_loaders(config: Stage1Config, train: ClothoSplit, val: ClothoSplit):
    train_set = AudioCaptionDataset(train, config.train_seconds, train=True, seed=config.seed)
    # own generators, kept off the global torch RNG (reseeded per epoch by _EpochAwareCrops), so the
    # number of DataLoader iterators created before an epoch cannot shift that epoch's random draws
    sampler = RandomSampler(train_set, generator=torch.Generator().manual_seed(config.seed))
    train_loader = DataLoader(train_set, batch_size=config.batch_size, sampler=sampler, drop_last=True,
                              num_workers=config.num_workers, generator=torch.Generator().manual_seed(config.seed))
    val_loader = DataLoader(ClipDataset(val, config.eval_seconds), batch_size=config.eval_batch_size,
                            num_workers=config.num_workers)
    return train_set, train_loader, val_loader


def fit(module: RetrievalModule, folder: Path, train_set, train_loader, val_loader, progress: bool) -> dict:
    """Train with checkpoints (best by val mAP@10, last every epoch), CSV logs, automatic resume."""
    config = module.config
    silence_third_party_noise()  # Lightning's banners and tips
    # best.ckpt only feeds embedding, stage 2 and evaluation: weights and parameters, no optimizer
    # state (for the paper's 442 M parameters that is 1.8 GB instead of 5.3 GB); resuming uses last.ckpt
    checkpoint = ModelCheckpoint(dirpath=folder / "checkpoints", filename="best", monitor="val/mAP@10",
                                 mode="max", save_on_train_epoch_end=False, enable_version_counter=False,
                                 save_weights_only=True)
    # last.ckpt every epoch: ModelCheckpoint(save_last=True) only refreshes it when best.ckpt improves,
    # so a resume would repeat every epoch since the best one. Both save after validation.
    last = ModelCheckpoint(dirpath=folder / "checkpoints", filename="last", save_top_k=1,
                           save_on_train_epoch_end=False, enable_version_counter=False)
    resolved = precision.announce(config.precision, config.accelerator)
    trainer = pl.Trainer(
        max_epochs=config.epochs, accelerator=config.accelerator, devices=config.devices,
        num_nodes=config.num_nodes, strategy=config.strategy, precision=resolved,
        accumulate_grad_batches=config.accumulate_grad_batches,
        callbacks=[checkpoint, last, _EpochAwareCrops(train_set)],
        logger=CSVLogger(folder, name="logs", version=f"attempt{attempts(folder)}"), log_every_n_steps=1,
        enable_progress_bar=progress, enable_model_summary=False, num_sanity_val_steps=0,
    )
    module.train_set, module.val_split = train_set, val_loader.dataset.split
    module.name = f"{folder.parent.name}/{folder.name}"
    module.val_samples = val_loader.dataset.n_samples
    last = folder / "checkpoints" / "last.ckpt"
    resume = str(last) if config.resume and last.exists() else None
    trainer.fit(module, train_loader, val_loader, ckpt_path=resume, weights_only=True)
    return {**best_epoch_metrics(folder), "precision": resolved, "skipped_steps": module.skipped_steps}
