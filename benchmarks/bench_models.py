"""Model benchmark: training throughput of one optimizer step and embedding throughput, on CPU.

Training: one step = forward of both encoders, the stage-1 contrastive loss, backward and an AdamW step
(the four parameter groups of the paper). Timed after a warm-up step; the figure is the median of the
repeats. Two models:

- tiny: the step notebook 01 runs on the tiny profile (``RetrievalModule`` of ``PROFILES["tiny"].stage1``:
  random small PaSST, packaged MiniLM with its top 2 layers training; its optimiser; batch 32 x 5 s clips).
  As in training, the clips' power spectrograms and (with ``text_step_cache``) the frozen text layers'
  states come from the per-run step caches (filled as ``StepCache`` fills them: the tiny training set fits
  the cache limit), and the
  precision is the profile's ``auto`` resolved for this CPU by ``salsa_lib.stages.precision`` (bf16 autocast where
  the CPU computes bf16 natively, else fp32), applied around the forward pass as Lightning applies it;
- paper shapes: PaSST-S p16/s16 (``passt_s_p16_s16_128_ap468``, random weights, 10 s windows) and a
  RoBERTa-large-shaped text encoder (random weights, hand-made config, random token ids of length 32:
  no tokenizer, no network), everything training, 32-bit; a small batch (default 4 x 30 s clips, three
  windows each) so it fits a laptop's memory. The paper trains batch 64 in fp16 on a GPU: this figure
  only says how heavy one step is on this CPU.

Paper shapes also give an estimate of the GPU memory of the paper's recipe (batch 64, fp16 AMP):
16 bytes per trainable parameter for weights, gradients and AdamW moments, plus the activations autograd
saves in one forward pass, measured at the small batch and scaled linearly (see ``memory_estimate``).

Thread use (``thread_use``): the tiny step in fp32 on one thread, on two, and in two one-thread
processes side by side, as the parallel runs of notebooks 01 and 03 train on a 2-core CPU.

Embedding (tiny model, eval mode, no gradients): audio clips/s (5 s clips) and captions/s.
Writes results/benchmarks/models.json.

    nice .venv/bin/python benchmarks/bench_models.py [--repeats 3] [--paper-batch 4] [--skip-paper] [--quick]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import resource
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from salsa_lib import paths
from salsa_lib.core.losses import contrastive_loss
from salsa_lib.files import atomic_write_json
from salsa_lib.profiles import PROFILES
from salsa_lib.stages import precision

TINY = PROFILES["tiny"].stage1  # the configuration notebook 01 trains on the tiny profile

SAMPLE_RATE = 32000
CAPTION_WORDS = ["a", "dog", "barks", "while", "cars", "pass", "by", "on", "wet", "street", "birds", "sing",
                 "loudly", "in", "the", "distance", "water", "drips", "slowly", "into", "metal", "bucket"]


def _captions(n: int, generator: torch.Generator) -> list[str]:
    lengths = torch.randint(6, 16, (n,), generator=generator).tolist()
    return [" ".join(CAPTION_WORDS[i] for i in torch.randint(0, len(CAPTION_WORDS), (k,), generator=generator))
            for k in lengths]


def _count(module: nn.Module) -> dict:
    return {"total": sum(p.numel() for p in module.parameters()),
            "trainable": sum(p.numel() for p in module.parameters() if p.requires_grad)}


def _time_steps(step, warmup: int, repeats: int) -> list[float]:
    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return times


def _optimizer(model) -> torch.optim.Optimizer:
    groups = model.parameter_groups()
    return torch.optim.AdamW([{"params": params, "lr": 1e-5} for params in groups.values() if params],
                             betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)


def _train_figures(times: list[float], batch: int, step: str) -> dict:
    """``step`` says in words what one timed step computes (the summary shows it beside each figure)."""
    median = statistics.median(times)
    return {"step": step, "seconds_per_step_median": round(median, 4),
            "seconds_per_step_all": [round(t, 4) for t in times], "clips_per_s": round(batch / median, 2)}


def notebook01_step(module, batch: dict, cache, resolved: str):
    """One training step as ``RetrievalModule.training_step`` takes it on one device, under the precision
    Lightning applies for ``resolved`` (autocast around the forward pass only), then AdamW."""
    from salsa_lib.stages.training import manual_step

    optimizer = module.configure_optimizers()["optimizer"]
    return lambda: manual_step(module, optimizer, batch, cache, resolved)


def tiny_step_inputs(batch: int, seconds: float) -> tuple:
    """Notebook 01's module on the tiny profile, one batch of random clips and captions, and what the step
    caches hold for them (filled as ``StepCache`` fills them: the tiny training set fits the cache limit)."""
    from salsa_lib.stages.step_cache import StepCache
    from salsa_lib.stages.training import RetrievalModule

    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    module = RetrievalModule(TINY.to_params(), steps_per_epoch=100)
    model = module.model
    audio = 0.1 * torch.randn(batch, int(seconds * SAMPLE_RATE), generator=generator)
    captions = _captions(batch, generator)
    text_cached = TINY.text_step_cache and model.text_encoder.bottom_frozen
    with torch.no_grad():
        cache = StepCache(model.audio_encoder.power(audio) if TINY.spectrogram_cache_gb > 0 else None,
                          model.text_encoder.frozen_states(captions) if text_cached else None)
    ids = torch.arange(batch)
    inputs = {"audio": audio, "audio_length": torch.ones(batch), "audio_idx": ids, "idx": ids, "caption": captions}
    return module, inputs, cache


def bench_tiny(batch: int, seconds: float, warmup: int, repeats: int, embed_batches: int) -> dict:
    config = TINY
    module, inputs, cache = tiny_step_inputs(batch, seconds)
    model, audio, lengths, captions = module.model, inputs["audio"], inputs["audio_length"], inputs["caption"]
    text_cached = cache.text is not None
    resolved = precision.announce(config.precision, "cpu")  # as training resolves it on this CPU
    step = notebook01_step(module, inputs, cache, resolved)
    cached = "power spectrograms and frozen text states" if text_cached else "power spectrograms"
    described = (f"notebook 01's step: stored {cached} (step caches), "
                 f"precision {resolved} (the profile's {config.precision!r} on this CPU), forward + contrastive "
                 f"loss + backward + AdamW")
    train = {**_train_figures(_time_steps(step, warmup, repeats), batch, described), "precision": resolved}
    breakdown = step_breakdown(model, _optimizer(model), audio, captions, warmup, repeats)

    model.eval()
    with torch.no_grad():
        audio_times = _time_steps(lambda: model.embed_audio(audio, lengths), 1, embed_batches)
        text_times = _time_steps(lambda: model.embed_text(captions), 1, embed_batches)
    return {
        "model": f"{config.audio_encoder} (width {config.passt_width}, depth {config.passt_depth}) + "
                 f"{config.text_encoder} (top {config.text_trainable_layers} layers train), embed_dim {config.embed_dim}"
                 f" (profile tiny, stage 1)",
        "batch": batch, "clip_seconds": seconds, "window_seconds": config.window_seconds,
        "parameters": {"audio_encoder": _count(model.audio_encoder), "text_encoder": _count(model.text_encoder),
                       "all": _count(model)},
        "train": train,
        "step_breakdown": breakdown,
        "embed": {"batch": batch, "repeats": embed_batches,
                  "audio_clips_per_s": round(batch / statistics.median(audio_times), 1),
                  "captions_per_s": round(batch / statistics.median(text_times), 1),
                  "audio_seconds_per_batch_median": round(statistics.median(audio_times), 4),
                  "text_seconds_per_batch_median": round(statistics.median(text_times), 4)},
    }


def _one_thread_worker(batch: int, seconds: float, warmup: int, repeats: int, barrier, results) -> None:
    """One of two processes side by side, as parallel runs train: one thread, fp32, timed once both are warm."""
    torch.set_num_threads(1)
    module, inputs, cache = tiny_step_inputs(batch, seconds)
    step = notebook01_step(module, inputs, cache, "32-true")
    _time_steps(step, warmup, 0)
    barrier.wait()
    results.put(_time_steps(step, 0, repeats))


def thread_use(batch: int, seconds: float, warmup: int, repeats: int) -> dict:
    """How notebook 01's fp32 step (what ``auto`` trains without native bf16) uses two cores.

    Three ways, each the median of ``repeats`` steps: one process on one thread; one process on two
    threads (a run alone, or the last run of the plan); two processes side by side with one thread each
    (``parallel_runs``' default on a CPU), started together once both are warm. The throughput ratio is
    steps per second of the pair over steps per second of one two-thread process.
    """
    if (os.cpu_count() or 1) < 2:
        return {"skipped": f"{os.cpu_count()} core: nothing to share"}
    previous = torch.get_num_threads()
    module, inputs, cache = tiny_step_inputs(batch, seconds)
    step = notebook01_step(module, inputs, cache, "32-true")
    alone = {}
    for threads in (1, 2):
        torch.set_num_threads(threads)
        alone[threads] = statistics.median(_time_steps(step, warmup, repeats))
    torch.set_num_threads(previous)

    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(2), context.Queue()
    workers = [context.Process(target=_one_thread_worker, args=(batch, seconds, warmup, repeats, barrier, results))
               for _ in range(2)]
    for worker in workers:
        worker.start()
    pair = [statistics.median(results.get(timeout=1800)) for _ in workers]
    for worker in workers:
        worker.join()
    return {
        "precision": "32-true", "batch": batch, "clip_seconds": seconds, "repeats": repeats,
        "seconds_per_step_one_thread": round(alone[1], 4),
        "seconds_per_step_two_threads": round(alone[2], 4),
        "seconds_per_step_side_by_side": [round(t, 4) for t in pair],
        "throughput_pair_vs_two_threads": round(sum(1 / t for t in pair) * alone[2], 2),
    }


def step_breakdown(model, optimizer, audio, captions, warmup: int, repeats: int) -> dict:
    """Median seconds of each part of a tiny training step, as it was (``before``) and as training now runs it.

    before: hear21passt's front end (STFT + mel) every step, captions padded to 32 tokens through all
    six MiniLM layers. after: the clips' power spectrograms and the frozen text layers' outputs are
    stored once per run (``salsa_lib.stages.step_cache``), so a step computes only the jittered mel filterbank,
    the top text layers, on captions padded to the longest of the batch. PaSST is the same in both.
    Every part runs in fp32 except the one labelled bf16, whatever this CPU's training precision is.
    """
    from salsa_lib.core.captions import preprocess_caption
    from salsa_lib.core.losses import contrastive_loss

    audio_encoder, text_encoder = model.audio_encoder, model.text_encoder
    model.train()
    power = audio_encoder.power(audio)
    states = text_encoder.frozen_states(captions)
    with torch.no_grad():
        mel = audio_encoder.log_mel(power.flatten(0, 1)).unsqueeze(1)
    tokens = text_encoder.tokenizer([preprocess_caption(c) for c in captions], padding="max_length",
                                    truncation=True, max_length=text_encoder.max_length, return_tensors="pt")
    lengths, ids = torch.ones(len(audio)), torch.arange(len(audio))

    def passt():
        cls, dist = audio_encoder.passt.forward_features(mel)
        ((cls + dist) / 2).sum().backward()

    def full_step(stored: bool):
        optimizer.zero_grad(set_to_none=True)
        if stored:
            a = model.embed_audio(audio, lengths, power=power)
            t = nn.functional.normalize(model.project_text(text_encoder.forward_from_states(states)), dim=-1)
        else:
            with torch.no_grad():
                windows_mel = audio_encoder.mel(audio).unsqueeze(1)
            cls, dist = audio_encoder.passt.forward_features(windows_mel)
            a = nn.functional.normalize(model.project_audio((cls + dist) / 2), dim=-1)
            t = nn.functional.normalize(model.project_text(text_encoder.model(**tokens).last_hidden_state[:, 0]), dim=-1)
        contrastive_loss(model.logits(a, t), ids).backward()
        optimizer.step()

    def bf16(step, stored: bool):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            step(stored)

    parts = {
        "before": {"mel front end (STFT + mel)": lambda: audio_encoder.mel(audio),
                   "small PaSST forward+backward": passt,
                   "MiniLM forward+backward (32 tokens, 6 layers)":
                       lambda: text_encoder.model(**tokens).last_hidden_state[:, 0].sum().backward(),
                   "whole step": lambda: full_step(False)},
        "after": {"mel filterbank on stored power": lambda: audio_encoder.log_mel(power.flatten(0, 1)),
                  "small PaSST forward+backward": passt,
                  "MiniLM top layers forward+backward (longest caption)":
                      lambda: text_encoder.forward_from_states(states).sum().backward(),
                  "whole step": lambda: full_step(True),
                  "whole step, bf16 autocast (auto's choice on a CPU with native bf16)":
                      lambda: bf16(full_step, True)},
    }
    out = {when: {name: round(statistics.median(_time_steps(f, warmup, repeats)), 4) for name, f in fns.items()}
           for when, fns in parts.items()}
    out["tokens"] = {"padded_before": int(tokens["input_ids"].shape[1]), "longest_after": max(len(s) for s in states)}
    optimizer.zero_grad(set_to_none=True)
    return out


class RandomRoberta(nn.Module):
    """RoBERTa-large shapes with random weights; takes token ids, returns the first token's last state."""

    def __init__(self):
        super().__init__()
        from transformers import RobertaConfig, RobertaModel

        config = RobertaConfig(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                               intermediate_size=4096, vocab_size=50265, max_position_embeddings=514,
                               type_vocab_size=1, hidden_dropout_prob=0.2, attention_probs_dropout_prob=0.2)
        self.model = RobertaModel(config, add_pooling_layer=False)
        self.dim = config.hidden_size

    def forward(self, token_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=token_ids, attention_mask=torch.ones_like(token_ids)).last_hidden_state[:, 0]


def saved_activation_bytes(model: nn.Module, forward_loss) -> int:
    """Bytes of the tensors autograd keeps for backward during one forward pass (weights excluded).

    Device-independent, unlike a CPU memory peak: these activations are what a GPU must also hold
    between forward and backward, and they grow linearly with the batch.
    """
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in weights:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = forward_loss()
    del loss
    return sum(saved.values())


def memory_estimate(model: nn.Module, activation_bytes: int, batch: int, target_batch: int) -> dict:
    """GPU memory the paper's recipe needs, extrapolated from measured shapes (not a GPU measurement).

    Static: fp32 weights + gradients + AdamW's two moments = 16 bytes per trainable parameter (the
    paper's fp16 AMP keeps fp32 master weights). Activations: measured at ``batch`` in fp32, scaled
    linearly to ``target_batch``; fp16 AMP stores most of them in half precision, so the true figure
    lies between half and all of the fp32 one. CUDA context, allocator slack and workspaces come on top.
    """
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    static = 16 * trainable + 4 * frozen
    scaled = activation_bytes * target_batch / batch
    return {"static_bytes": static, "activation_bytes_at_target_batch": round(scaled),
            "static_gb": round(static / 1e9, 2), "activations_fp32_gb_at_measured_batch": round(activation_bytes / 1e9, 2),
            "measured_batch": batch, "target_batch": target_batch,
            "activations_fp32_gb_at_target_batch": round(scaled / 1e9, 1),
            "total_gb_fp16_amp_range": [round((static + scaled / 2) / 1e9, 1), round((static + scaled) / 1e9, 1)]}


def bench_paper(batch: int, seconds: float, tokens: int, warmup: int, repeats: int, target_batch: int = 64) -> dict:
    from salsa_lib.core.encoders import PAPER_PASST, AudioEncoder, build_passt
    from salsa_lib.core.model import DualEncoder

    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    window = 10.0
    audio_encoder = AudioEncoder(build_passt(PAPER_PASST, window, pretrained=False), window)
    model = DualEncoder(audio_encoder, RandomRoberta(), embed_dim=1024, tau=0.05)
    optimizer = _optimizer(model)
    audio = 0.1 * torch.randn(batch, int(seconds * SAMPLE_RATE), generator=generator)
    lengths = torch.ones(batch)
    # ids 3..50264: skip <s>=0, <pad>=1, </s>=2 so every position is a real token
    token_ids = torch.randint(3, 50265, (batch, tokens), generator=generator)
    ids = torch.arange(batch)

    def forward_loss():
        model.train()
        audio_embeddings = model.embed_audio(audio, lengths)
        text_embeddings = nn.functional.normalize(model.project_text(model.text_encoder(token_ids)), dim=-1)
        return contrastive_loss(model.logits(audio_embeddings, text_embeddings), ids)

    def step():
        optimizer.zero_grad(set_to_none=True)
        forward_loss().backward()
        optimizer.step()

    train = _train_figures(_time_steps(step, warmup, repeats), batch,
                           "paper shapes: STFT every step, everything trains, fp32, forward + contrastive loss + "
                           "backward + AdamW")
    memory = memory_estimate(model, saved_activation_bytes(model, forward_loss), batch, target_batch)
    return {
        "model": f"{PAPER_PASST} (random weights, {window:g} s windows) + RoBERTa-large shapes "
                 f"(random weights, {tokens} random token ids), embed_dim 1024, fp32, everything trains",
        "batch": batch, "clip_seconds": seconds, "window_seconds": window,
        "windows_per_clip": -(-int(seconds * SAMPLE_RATE) // int(window * SAMPLE_RATE)), "text_tokens": tokens,
        "parameters": {"audio_encoder": _count(model.audio_encoder), "text_encoder": _count(model.text_encoder),
                       "all": _count(model)},
        "train": train,
        "gpu_memory_estimate": memory,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed training steps per model (after 1 warm-up)")
    parser.add_argument("--tiny-batch", type=int, default=TINY.batch_size, help="default: the tiny profile's")
    parser.add_argument("--tiny-seconds", type=float, default=TINY.train_seconds, help="default: the tiny profile's")
    parser.add_argument("--embed-repeats", type=int, default=5, help="timed embedding batches")
    parser.add_argument("--paper-batch", type=int, default=4)
    parser.add_argument("--paper-seconds", type=float, default=30.0)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--skip-paper", action="store_true", help="only the tiny model")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: tiny model only, batch 4 x 1 s, 1 repeat (figures not meaningful)")
    parser.add_argument("--output", help="JSON path (default results/benchmarks/models.json)")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats, args.embed_repeats, args.tiny_batch, args.tiny_seconds = 1, 1, 4, 1.0
        args.skip_paper = True
    warmup = 1
    out_path = Path(args.output) if args.output else paths.results_dir("benchmarks") / "models.json"

    start = time.perf_counter()
    tiny = bench_tiny(args.tiny_batch, args.tiny_seconds, warmup, args.repeats, args.embed_repeats)
    print(f"tiny: {tiny['train']['clips_per_s']} clips/s training, {tiny['embed']['audio_clips_per_s']} clips/s "
          f"and {tiny['embed']['captions_per_s']} captions/s embedding", flush=True)
    threads = thread_use(args.tiny_batch, args.tiny_seconds, warmup, args.repeats)
    if "skipped" not in threads:
        print(f"tiny fp32 step: {threads['seconds_per_step_one_thread']} s on 1 thread, "
              f"{threads['seconds_per_step_two_threads']} s on 2; two one-thread processes side by side: "
              f"{threads['throughput_pair_vs_two_threads']}x the throughput of one on two threads", flush=True)
    paper = None
    if not args.skip_paper:
        paper = bench_paper(args.paper_batch, args.paper_seconds, args.tokens, warmup, args.repeats)
        memory = paper["gpu_memory_estimate"]
        print(f"paper shapes: {paper['train']['clips_per_s']} clips/s, "
              f"{paper['train']['seconds_per_step_median']} s/step; estimated GPU memory at batch "
              f"{memory['target_batch']}: {memory['total_gb_fp16_amp_range']} GB", flush=True)
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {platform.system()}",
        **precision.cpu_record(),
        "torch": torch.__version__, "torch_threads": torch.get_num_threads(), "device": "cpu",
        "quick": args.quick, "warmup_steps": warmup, "repeats": args.repeats,
        "step": "one optimizer step: tiny as notebook 01 runs it, paper shapes in fp32 without caches (see each "
                "model's train.step)",
        "tiny": tiny, "thread_use": threads, "paper_shapes": paper,
        "wall_s": round(time.perf_counter() - start, 1),
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
    }
    atomic_write_json(out_path, result)
    print(f"written to {out_path}")


if __name__ == "__main__":
    main()
