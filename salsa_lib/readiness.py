"""``./run_all.sh --profile clotho --check``: is everything the paper profile needs there, before a long job?

Each item says OK, MISSING, OPTIONAL, WARN or UNKNOWN (a GPU whose memory cannot be judged without the
benchmark's estimate), and for what is missing where to get it and where to put it.
Nothing is downloaded: the check only looks at disk and, for what is not on disk, asks with a short
timeout whether its source answers (``probe``; tests pass a fake, so they never touch the network).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import requests
import torch
from huggingface_hub import try_to_load_from_cache

from salsa_lib import paths
from salsa_lib.config import MODEL_SAMPLE_RATE
from salsa_lib.core.encoders import PACKAGED_MINILM, RANDOM_ROBERTA_LARGE
from salsa_lib.data import data_sources
from salsa_lib.data.clotho import (
    CLOTHO_FILES,
    CLOTHO_SPLITS,
    CLOTHO_URL,
    _audio_complete,
    _has_md5,
    archive_name,
    local_path,
)
from salsa_lib.profiles import Profile

PASST_FILE = "passt-s-f128-p16-s16-ap.468.pt"
PASST_URL = f"https://github.com/kkoutini/PaSST/releases/download/v0.0.2-audioset/{PASST_FILE}"
HF_URL = "https://huggingface.co/{name}/resolve/main/config.json"
GB = 1e9
# disk, upper bounds from the data's facts: 5,929 clips of at most 30 s, 16-bit mono
CLOTHO_CLIPS = 3839 + 1045 + 1045
WAV_BYTES = CLOTHO_CLIPS * 30 * 44100 * 2  # extracted wav at 44.1 kHz; the 7z archives are at most this
CACHE_BYTES = CLOTHO_CLIPS * 30 * MODEL_SAMPLE_RATE * 2  # our int16 cache at 32 kHz
CHECKPOINT_BYTES = (1.8 + 5.3) * GB  # best.ckpt (weights) + last.ckpt (with AdamW state) per paper-sized run

Probe = Callable[[str, float], str | None]  # url, timeout -> None when reachable, else the reason


@dataclass(frozen=True)
class Item:
    name: str
    status: str  # OK, MISSING (required), OPTIONAL (missing but not required), WARN, UNKNOWN (cannot judge)
    detail: str
    todo: str = ""


def http_probe(url: str, timeout: float = 3.0) -> str | None:
    """HEAD request with a short timeout; None when the server answers below 400."""
    try:
        response = requests.head(url, timeout=timeout, allow_redirects=True)
    except requests.exceptions.RequestException as err:
        return f"no connection ({type(err).__name__})"
    return None if response.status_code < 400 else f"HTTP {response.status_code}"


def _reach(url: str, probe: Probe, timeout: float) -> str:
    reason = probe(url, timeout)
    return f"not on disk; {url} is reachable, the first run downloads it" if reason is None else \
        f"not on disk, and offline: {url} did not answer ({reason})"


def clotho_items(root: Path, probe: Probe, timeout: float) -> list[Item]:
    """Per split: audio extracted (marker) or its archive with the right md5; both CSVs with the right md5."""
    items = []
    for split in CLOTHO_SPLITS:
        names = [n for n in CLOTHO_FILES if split in n]
        bad = [n for n in names if n.endswith(".csv") and not _has_md5(local_path(root, n), CLOTHO_FILES[n])]
        archive = archive_name(split)
        if not _audio_complete(root, split) and not _has_md5(local_path(root, archive), CLOTHO_FILES[archive]):
            bad.insert(0, archive)
        if not bad:
            items.append(Item(f"ClothoV2.1 {split}", "OK", f"audio and CSVs under {root} (md5 checked)"))
            continue
        url = CLOTHO_URL.format(file=bad[0])
        todo = "; ".join(f"{CLOTHO_URL.format(file=n)} -> {local_path(root, n)} (md5 {CLOTHO_FILES[n]})" for n in bad)
        items.append(Item(f"ClothoV2.1 {split}", "MISSING", f"{', '.join(bad)}: {_reach(url, probe, timeout)}",
                          f"notebook 00 downloads them (resumable), or place by hand: {todo}"))
    return items


def passt_item(probe: Probe, timeout: float) -> Item:
    target = Path(torch.hub.get_dir()) / "checkpoints" / PASST_FILE
    if target.is_file():
        return Item("PaSST AudioSet weights", "OK", str(target))
    return Item("PaSST AudioSet weights", "MISSING", _reach(PASST_URL, probe, timeout),
                f"notebook 01 downloads it through hear21passt, or place {PASST_URL} at {target}")


def hub_item(name: str, probe: Probe, timeout: float) -> Item:
    """A transformers model by hub name: config, weights and tokenizer in the local cache."""
    cached = {f: try_to_load_from_cache(name, f) for f in ("config.json", "model.safetensors", "pytorch_model.bin",
                                                           "tokenizer.json", "vocab.json")}
    has = {f for f, p in cached.items() if isinstance(p, str)}
    if "config.json" in has and has & {"model.safetensors", "pytorch_model.bin"} and has & {"tokenizer.json", "vocab.json"}:
        return Item(f"text encoder {name}", "OK", f"in the transformers cache ({Path(cached['config.json']).parent})")
    return Item(f"text encoder {name}", "MISSING", _reach(HF_URL.format(name=name), probe, timeout),
                f"the first run downloads it into the transformers cache (HF_HOME), or on a machine with "
                f"network run: huggingface-cli download {name}, and copy the cache folder (HF_HOME) here")


def estimate_files() -> list[Path]:
    """Where the models benchmark's figures are read from: under SALSA_HOME (where the benchmark writes
    them), then the copy committed with the code."""
    return list(dict.fromkeys([paths.results_dir("benchmarks") / "models.json",
                               paths.REPO_ROOT / "results" / "benchmarks" / "models.json"]))


def gpu_need_gb() -> tuple[float, float] | None:
    """The recipe's GPU memory estimate (low, high) from the first of ``estimate_files`` that has one."""
    for path in estimate_files():
        try:
            low, high = json.loads(path.read_text())["paper_shapes"]["gpu_memory_estimate"]["total_gb_fp16_amp_range"]
            return float(low), float(high)
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return None


def cuda_gpus() -> list[tuple[str, float]]:
    if not torch.cuda.is_available():
        return []
    return [(torch.cuda.get_device_name(i), torch.cuda.get_device_properties(i).total_memory / GB)
            for i in range(torch.cuda.device_count())]


def gpu_item(gpus: list[tuple[str, float]], need: tuple[float, float] | None) -> Item:
    estimate = f"the recipe needs an estimated {need[0]:.0f}-{need[1]:.0f} GB (batch 64, fp16 AMP)" if need else \
        f"no memory estimate found ({' or '.join(map(str, estimate_files()))})"
    if not gpus:
        return Item("GPU", "MISSING", f"no CUDA GPU visible; {estimate}",
                    "run on a machine with an NVIDIA GPU (the authors used one A40, 48 GB), or try the "
                    "code path on CPU first: ./run_all.sh --profile clotho-dryrun")
    name, memory = max(gpus, key=lambda g: g[1])
    found = f"{name}, {memory:.0f} GB ({len(gpus)} visible); {estimate}"
    if need is None:
        return Item("GPU", "UNKNOWN", found, "cannot tell whether it has enough memory: run "
                    "benchmarks/bench_models.py for the estimate (the authors trained batch 64 on one A40, 48 GB)")
    if memory >= need[1]:
        return Item("GPU", "OK", found)
    if memory >= need[0]:
        return Item("GPU", "WARN", found, "may run out of memory at the upper estimate; if so, halve batch_size "
                    "and set accumulate_grad_batches 2 (note: the in-batch loss then sees 32, not 64)")
    return Item("GPU", "MISSING", found, "too little memory for batch 64; use a larger GPU, or several with -p devices N")


def disk_item(root: Path, clotho_root: Path, free_bytes: int) -> Item:
    """Free space against what is still to come: archives + extracted wav + 32 kHz cache + checkpoints."""
    extracted = all(_audio_complete(clotho_root, s) for s in CLOTHO_SPLITS)
    need = (0 if extracted else 2 * WAV_BYTES) + CACHE_BYTES + 2 * CHECKPOINT_BYTES
    parts = (f"{'' if extracted else f'download + extraction <= {2 * WAV_BYTES / GB:.0f} GB, '}audio cache <= "
             f"{CACHE_BYTES / GB:.0f} GB, checkpoints {2 * CHECKPOINT_BYTES / GB:.0f} GB (stages 1 and 2)")
    detail = f"{free_bytes / GB:.0f} GB free under {root}; needed at most {need / GB:.0f} GB ({parts})"
    if free_bytes >= need:
        return Item("disk", "OK", detail)
    return Item("disk", "MISSING", detail, "free space, or point SALSA_HOME at a larger disk")


def released_item(path: Path) -> Item:
    if path.is_file():
        return Item("released checkpoint (optional)", "OK", str(path))
    return Item("released checkpoint (optional)", "OPTIONAL", f"not at {path}; notebook 04 skips it",
                "download passt_roberta.ckpt as the SALSA authors' README describes (parts joined with cat) "
                f"and place it at {path}")


def check(profile: Profile, probe: Probe | None = None, timeout: float = 3.0, gpus=None,
          free_bytes: int | None = None) -> list[Item]:
    """The items ``profile`` needs, in the order a run needs them; ``probe`` defaults to ``http_probe``."""
    probe = probe or http_probe  # looked up at call time, so tests can replace it

    root = paths.project_root()
    items = []
    clotho_root = data_sources.locate(profile.data).root
    if profile.data.dataset == "clotho":
        items += clotho_items(clotho_root, probe, timeout)
    if profile.stage1.pretrained_audio:
        items.append(passt_item(probe, timeout))
    text = profile.stage1.text_encoder
    if text not in (PACKAGED_MINILM, RANDOM_ROBERTA_LARGE) and not Path(text).expanduser().is_dir():
        items.append(hub_item(text, probe, timeout))
    if "gpu" in (profile.stage1.accelerator, profile.stage2.accelerator):
        items.append(gpu_item(cuda_gpus() if gpus is None else gpus, gpu_need_gb()))
    if profile.data.dataset == "clotho":
        root.mkdir(parents=True, exist_ok=True)
        items.append(disk_item(root, clotho_root, shutil.disk_usage(root).free if free_bytes is None else free_bytes))
    if profile.evaluation.released_checkpoint:
        items.append(released_item(root / profile.evaluation.released_checkpoint))
    return items


def report(items: list[Item]) -> tuple[str, int]:
    """The printed check and the exit status (1 when a required item is missing)."""
    lines = []
    for item in items:
        lines.append(f"[{item.status:8}] {item.name}: {item.detail}")
        if item.todo and item.status != "OK":
            lines.append(f"{'':11}what to do: {item.todo}")
    missing = [i.name for i in items if i.status == "MISSING"]
    lines.append(f"not ready: missing {', '.join(missing)}" if missing else "ready: everything required is there")
    return "\n".join(lines), int(bool(missing))
