"""Pretraining the small PaSST on audio tagging: the tiny profile's stand-in for AudioSet (method §3.2).

The paper's PaSST has learnt to tag AudioSet's 527 classes before it sees a caption; a randomly
initialised encoder trained on a few hundred captioned clips is far from that regime. Here the small
PaSST first learns to tag a separate synthetic pool (``synth.tagging_pool``): which sources sound and
with which attributes (``siren``, ``siren:low``, ``siren:end``, ...). The pool shares no clip with the
benchmark's splits (checked on every run). The stage-1 members then start from these weights, as the
paper's members start from AudioSet's. The other families of the mixed ensemble (``audio_families``)
are pretrained on the same pool with the same recipe, each into its own subfolder.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import average_precision_score
from torch import nn

from salsa_lib import paths, provenance
from salsa_lib.config import MODEL_SAMPLE_RATE, SMALL_AUDIO_ENCODERS, DataConfig, Stage1Config
from salsa_lib.core.encoders import SMALL_PASST, AudioEncoder, build_audio_encoder
from salsa_lib.data import data_sources, synth, synth_scenes
from salsa_lib.errors import ConfigError, DataError
from salsa_lib.files import atomic_path, atomic_write_json, file_digest
from salsa_lib.stages import precision

HELD_OUT = 0.1  # fraction of the pool kept aside to measure tagging accuracy
HEAD_LR_FACTOR = 30.0  # the new tagging head needs far larger steps than the encoder to learn a readout


def tag_names() -> list[str]:
    """Every source, and every (source, attribute value) the generator can draw: ``bell``, ``bell:low``."""
    return [tag for source in sorted(synth_scenes.SOURCES)
            for tag in [source, *(f"{source}:{value}" for attribute in synth_scenes.attributes_of(source)
                                  for value in synth_scenes.VALUES[attribute].split(";"))]]


def tag_matrix(clips: list[dict], names: list[str]) -> np.ndarray:
    """(clips, tags) 0/1 targets: a tag is on when some event of the clip has that source (and value)."""
    column = {name: k for k, name in enumerate(names)}
    out = np.zeros((len(clips), len(names)), dtype=np.float32)
    for i, clip in enumerate(clips):
        for event in clip["events"]:
            out[i, column[event["source"]]] = 1
            for value in event["attributes"].values():
                out[i, column[f"{event['source']}:{value}"]] = 1
    return out


def folder(profile: str, audio_encoder: str = SMALL_PASST) -> Path:
    """results/<profile>/pretraining/ for the small PaSST, a subfolder per other family."""
    base = paths.results_dir(profile) / "pretraining"
    return base if audio_encoder == SMALL_PASST else base / audio_encoder


def checkpoint_path(profile: str, audio_encoder: str = SMALL_PASST) -> Path:
    name = "passt" if audio_encoder == SMALL_PASST else audio_encoder
    return folder(profile, audio_encoder) / f"{name}_pretrained.pt"


def ensure_pool(n_clips: int, seconds: float, seed: int, progress: bool = True) -> Path:
    """The tagging pool's file under data/cache/ (it is data, not a result), generated when missing."""
    path = paths.data_dir() / "cache" / "pretraining_pool" / f"pool-{n_clips}-{seconds:g}s-seed{seed}.npz"
    if not path.exists():
        if progress:
            print(f"generating the pretraining pool ({n_clips} clips) ...", flush=True)
        audio, clips = synth.tagging_pool(n_clips, seconds, MODEL_SAMPLE_RATE, seed)
        with atomic_path(path, suffix=".npz") as tmp:
            np.savez(tmp, audio=np.round(np.clip(audio, -1, 1) * 32767).astype(np.int16), clips=json.dumps(clips))
    return path


def pool(n_clips: int, seconds: float, seed: int, progress: bool = True) -> tuple[np.ndarray, list[dict]]:
    """The tagging pool: audio as float32 in [-1, 1] (stored as int16) and each clip's events."""
    with np.load(ensure_pool(n_clips, seconds, seed, progress)) as stored:
        return stored["audio"].astype(np.float32) / 32767, json.loads(str(stored["clips"]))


def run_params(config: Stage1Config, data: DataConfig) -> dict:
    """What the pretrained weights depend on: the pool, the encoder's family and shape, the optimisation."""
    return {"audio_encoder": config.audio_encoder, "clips": config.pretrain_clips, "seconds": config.window_seconds, "pool_seed": data.synthetic_seed,
            "seed": config.seed, "epochs": config.pretrain_epochs, "lr": config.pretrain_lr,
            "batch_size": config.batch_size, "width": config.passt_width, "depth": config.passt_depth,
            "heads": config.passt_heads, "window_seconds": config.window_seconds, "tags": len(tag_names()),
            "precision": pretraining_precision(config)}


def pretraining_precision(config: Stage1Config) -> str:
    """The stage's precision as this CPU resolves it (pretraining runs on the CPU; fp16 needs a GPU)."""
    resolved = precision.announce(config.precision, "cpu")
    return resolved if precision.autocast_dtype(resolved) != torch.float16 else precision.CPU_FP32_PRECISION


def pretrain_or_reuse(config: Stage1Config, data: DataConfig, progress: bool = True, force: bool = False) -> dict:
    """Cache-or-compute: reuse the weights trained with the same parameters unless ``force``."""
    if config.pretrain_clips == 0:
        raise ConfigError("pretrain_clips is 0: this profile does not pretrain the audio encoder")
    if config.audio_encoder not in SMALL_AUDIO_ENCODERS:
        raise ConfigError(f"pretrain_clips={config.pretrain_clips} pretrains the small encoders only "
                          f"({', '.join(SMALL_AUDIO_ENCODERS)}); {config.audio_encoder!r} has its own weights")
    weights = checkpoint_path(config.profile, config.audio_encoder)
    params, record_path = run_params(config, data), folder(config.profile, config.audio_encoder) / "run.json"
    if record_path.exists() and weights.exists() and not force:
        record = json.loads(record_path.read_text())
        if record["params"] == params and record["checkpoint_sha256"] == file_digest(weights):
            return record
    audio, clips = pool(config.pretrain_clips, config.window_seconds, data.synthetic_seed, progress)
    if data.dataset == "synthetic":
        _check_disjoint(clips, audio.shape[1], data)
    started = time.perf_counter()
    trunk, metrics = train_tagger(audio, tag_matrix(clips, tag_names()), config, progress)
    # through a file object: torch.save names the archive after a path, and the temporary one is random
    with atomic_path(weights, suffix=".pt") as tmp, open(tmp, "wb") as handle:
        torch.save({"passt": trunk.state_dict(), "params": params, "tags": tag_names()}, handle)
    record = {"params": params, "checkpoint": weights.name, "checkpoint_sha256": file_digest(weights),
              "seconds": round(time.perf_counter() - started, 1), **metrics, **provenance.run_metadata()}
    atomic_write_json(record_path, record)
    return record


def _check_disjoint(clips: list[dict], n_samples: int, data: DataConfig) -> None:
    hits = synth.pool_overlap(clips, n_samples, data_sources.locate(data).root)
    if hits:
        raise DataError(f"the pretraining pool repeats {len(hits)} benchmark clip(s), e.g. pool clip {hits[0][0]} = "
                        f"{hits[0][1]}/{hits[0][2]}; the pool must be disjoint from train/val/test")


def load_pretrained(trunk: nn.Module, profile: str, record: dict) -> None:
    """Put the pretrained weights into a freshly built window backbone of the same family and shape
    (``AudioEncoder.trunk``; shapes must match exactly). The file's key says "passt" for every family."""
    path = checkpoint_path(profile, record["params"].get("audio_encoder", SMALL_PASST))
    if file_digest(path) != record["checkpoint_sha256"]:
        raise DataError(f"{path} changed since it was trained (hash mismatch); rerun notebook 01 with --force")
    trunk.load_state_dict(torch.load(path, map_location="cpu", weights_only=True)["passt"])


def train_tagger(audio: np.ndarray, tags: np.ndarray, config: Stage1Config, progress: bool = True):
    """Multi-label tagging (binary cross-entropy) with the mel jitter (and PaSST's patchout) on; returns
    the trained window backbone (``AudioEncoder.trunk``) of ``config.audio_encoder``."""
    torch.manual_seed(config.seed)
    encoder = build_audio_encoder(config.audio_encoder, config.window_seconds, config.passt_width, config.passt_depth,
                                  config.passt_heads, pretrained=False)
    n_val = max(1, int(round(HELD_OUT * len(audio))))
    head = tagging_head(encoder.dim, tags[: len(audio) - n_val])
    power = torch.cat([encoder.power(torch.from_numpy(audio[k:k + 64])) for k in range(0, len(audio), 64)])
    targets, length = torch.from_numpy(tags), torch.ones(len(audio))
    train_ids = np.arange(len(audio) - n_val)
    steps_per_epoch = max(1, len(train_ids) // config.batch_size)
    use_bf16 = precision.autocast_dtype(pretraining_precision(config)) == torch.bfloat16
    total = steps_per_epoch * config.pretrain_epochs
    optimizer = torch.optim.AdamW([{"params": [p for p in encoder.parameters() if p.requires_grad]},
                                   {"params": head.parameters(), "lr": HEAD_LR_FACTOR * config.pretrain_lr}],
                                  lr=config.pretrain_lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / steps_per_epoch) * 0.5 * (
        1 + math.cos(math.pi * min(s / total, 1.0))))
    before, history, rng = evaluate_tagger(encoder, head, power, targets, n_val), [], np.random.default_rng(config.seed)
    for epoch in range(config.pretrain_epochs):
        encoder.train()
        order, losses = rng.permutation(train_ids), []
        for step in range(steps_per_epoch):
            ids = torch.from_numpy(order[step * config.batch_size:(step + 1) * config.batch_size])
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=use_bf16):
                logits = head(encoder(None, length[ids], power=power[ids]))  # the stage's mixed precision
            loss = nn.functional.binary_cross_entropy_with_logits(logits.float(), targets[ids])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            losses.append(loss.item())
        history.append({"epoch": epoch, "loss": float(np.mean(losses)),
                        **evaluate_tagger(encoder, head, power, targets, n_val)})
        if progress:
            print(f"pretraining epoch {epoch}: " + ", ".join(f"{k} {v:.3f}" for k, v in history[-1].items()
                                                            if k != "epoch"), flush=True)
    return encoder.trunk, {"held_out_clips": n_val, "before": before, "after": history[-1], "history": history}


def tagging_head(dim: int, train_tags: np.ndarray) -> nn.Linear:
    """A linear head that starts at the tags' training frequencies: zero weights, bias = log-odds of the prior.

    With a random head the first steps mostly fit how common each tag is, and they do it by
    collapsing the encoder's output to a constant (measured: the embeddings' spread across clips
    fell fourfold in 12 steps and the tagging stayed at the prior). Starting at the prior leaves only
    the clip-specific part to learn.
    """
    head = nn.Linear(dim, train_tags.shape[1])
    prior = torch.from_numpy(train_tags.mean(0)).clamp(1e-3, 1 - 1e-3)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.copy_(torch.log(prior / (1 - prior)))
    return head


@torch.no_grad()
def evaluate_tagger(encoder: AudioEncoder, head: nn.Module, power, targets, n_val: int) -> dict:
    """On the held-out end of the pool: tag mAP (macro over tags present) and source accuracy."""
    encoder.eval()
    ids = torch.arange(len(power) - n_val, len(power))
    scores = torch.sigmoid(head(encoder(None, torch.ones(len(ids)), power=power[ids]))).numpy()
    truth = targets[ids].numpy().astype(bool)
    present = truth.any(0)
    sources = [k for k, name in enumerate(tag_names()) if ":" not in name]
    return {"tag mAP": float(average_precision_score(truth[:, present], scores[:, present], average="macro")),
            "tag accuracy": float(((scores > 0.5) == truth).mean()),
            "source accuracy": float(((scores[:, sources] > 0.5) == truth[:, sources]).mean()),
            "source sets exactly right": float(((scores[:, sources] > 0.5) == truth[:, sources]).all(1).mean())}
