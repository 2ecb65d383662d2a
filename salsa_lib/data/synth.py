"""A synthetic audio-caption benchmark laid out exactly like ClothoV2, with a known truth matrix.

Why it exists: the default profile must run the whole pipeline on a 2-core CPU in minutes, and SALSA's
premise is that a caption often describes more clips than its own. Here every caption is a list of
checkable claims about synthesized sound events, so which captions truly describe which clips is known
exactly (``synthetic_truth_<split>.npz``) and can be audited from ``synthetic_events_<split>.json``.
"""

from __future__ import annotations

import io
import json
import math
import operator
import os
import shutil
import tempfile
import time
import zipfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
import soundfile as sf
from tqdm.auto import tqdm

from salsa_lib.data.splits import CAPTIONS_PER_CLIP, SPLIT_FOLDERS
from salsa_lib.data.synth_scenes import SOURCES, attributes_of, captions_for, render, sample_events, truth_matrix
from salsa_lib.errors import ConfigError, DataError
from salsa_lib.files import atomic_path, atomic_write_csv, atomic_write_json
from salsa_lib.quiet import progress_visible

SPLITS = tuple(SPLIT_FOLDERS.values())
FORMAT_VERSION = 1
DEFAULT_N_CLIPS = {"development": 300, "validation": 100, "evaluation": 100}
def _save_npz(path, matrix):
    """scipy.sparse.save_npz's layout, but with fixed zip timestamps so equal seeds give equal bytes."""
    arrays = {"indices": matrix.indices, "indptr": matrix.indptr, "format": np.array(b"csr"),
              "shape": np.array(matrix.shape), "data": matrix.data}
    with atomic_path(path, ".npz") as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, array in arrays.items():
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.asarray(array), allow_pickle=False)
            archive.writestr(zipfile.ZipInfo(f"{name}.npy", (1980, 1, 1, 0, 0, 0)), buffer.getvalue(),
                             compress_type=zipfile.ZIP_DEFLATED)


def _write_split(folder, index, params, bar):
    """One split: WAVs, both CSVs, truth matrix and the audit JSON, from the split's own seed."""
    split, sr = SPLITS[index], params["sample_rate"]
    n, count = round(params["clip_seconds"] * sr), params["n_clips"][SPLITS[index]]
    meta_seed, audio_seed = np.random.SeedSequence(params["seed"]).spawn(len(SPLITS))[index].spawn(2)
    meta_rng, clips = np.random.default_rng(meta_seed), []
    (folder / split).mkdir()
    for i, clip_seed in enumerate(audio_seed.spawn(count)):
        events = sample_events(meta_rng, n)
        clip = {"file_name": f"synthetic_{split}_{i:04d}.wav", "snr_db": round(float(meta_rng.uniform(20, 35)), 2),
                "peak": round(float(meta_rng.uniform(0.6, 0.9)), 3), "events": events,
                "captions": captions_for(meta_rng, events)}
        audio = render(np.random.default_rng(clip_seed), clip, n, sr)
        sf.write(folder / split / clip["file_name"], np.round(audio * 32767).astype(np.int16), sr, subtype="PCM_16")
        clips.append(clip)
        bar.update()
    names = [c["file_name"] for c in clips]
    texts = {f"caption_{k + 1}": [c["captions"][k]["text"] for c in clips] for k in range(CAPTIONS_PER_CLIP)}
    atomic_write_csv(folder / f"clotho_captions_{split}.csv", pd.DataFrame({"file_name": names, **texts}))
    ids = [(index + 1) * 1_000_000 + i for i in range(count)]
    atomic_write_csv(folder / f"clotho_metadata_{split}.csv", pd.DataFrame({
        "file_name": names, "keywords": [";".join(e["source"] for e in c["events"]) for c in clips],
        "sound_id": ids, "sound_link": [f"https://example.org/salsa-synthetic/{i}" for i in ids],
        "start_end_samples": f"[0, {n}]", "manufacturer": "salsa_lib.synth", "license": "CC0 (synthetic)"}))
    _save_npz(folder / f"synthetic_truth_{split}.npz", truth_matrix(clips))
    atomic_write_json(folder / f"synthetic_events_{split}.json", {
        "format_version": FORMAT_VERSION, "split": split, "sample_rate": sr, "clip_seconds": params["clip_seconds"],
        "sources": {name: attributes_of(name) for name in SOURCES}, "clips": clips})


def _integer(name, value, minimum):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return operator.index(value)


def _parameters(n_clips, clip_seconds, sample_rate, seed):
    """Validated parameters as they are stamped in synthetic.json (and compared for reuse)."""
    if n_clips is not None and not isinstance(n_clips, Mapping):
        raise ConfigError(f"n_clips must map split names {SPLITS} to clip counts, got {n_clips!r}")
    unknown = sorted(map(repr, set(n_clips or {}) - set(SPLITS)))
    if unknown:
        raise ConfigError(f"n_clips names unknown split(s) {', '.join(unknown)}; expected some of {SPLITS}")
    counts = {**DEFAULT_N_CLIPS, **(n_clips or {})}
    counts = {s: _integer(f"n_clips[{s!r}]", counts[s], 1) for s in SPLITS}
    if isinstance(clip_seconds, bool) or not isinstance(clip_seconds, (int, float)) or not (
            math.isfinite(clip_seconds) and clip_seconds >= 0.1):
        raise ConfigError(f"clip_seconds must be a number >= 0.1 (room for sound events), got {clip_seconds!r}")
    return {"format_version": FORMAT_VERSION, "n_clips": counts, "clip_seconds": float(clip_seconds),
            "sample_rate": _integer("sample_rate", sample_rate, 16000), "seed": _integer("seed", seed, 0)}


def _is_complete(root, params):
    """Reuse only a set stamped with exactly these parameters (the stamp is written last)."""
    try:
        stamp = json.loads((root / "synthetic.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return stamp == params and all((root / f"{kind}_{s}.{ext}").is_file() for s in SPLITS for kind, ext in (
        ("clotho_captions", "csv"), ("clotho_metadata", "csv"), ("synthetic_truth", "npz")))


def _swap_in(new, root):
    """Move the finished set to ``root``; the old one is deleted only once the new one is in place."""
    old = new.with_name(new.name.replace(".partial-", ".old-"))
    if root.exists():
        os.rename(root, old)
    try:
        os.rename(new, root)
    except OSError:
        if old.exists():
            os.rename(old, root)
        raise
    shutil.rmtree(old, ignore_errors=True)


def generate_synthetic_clotho(root, *, n_clips=None, clip_seconds=5.0, sample_rate=44100, seed=0,
                              progress=True) -> dict:
    """Generate the benchmark at ``root`` unless an identical one is there already.

    Everything is written to a sibling ``<root>.partial-*`` folder and swapped in at the end, so an
    interrupted run never leaves half a data set at ``root`` nor destroys the previous good one.
    """
    started, root = time.perf_counter(), Path(root)
    params = _parameters(n_clips, clip_seconds, sample_rate, seed)

    def summary(reused):
        return {"root": str(root), "counts": dict(params["n_clips"]),
                "seconds": round(time.perf_counter() - started, 3), "reused": reused}

    if _is_complete(root, params):
        return summary(True)
    if root.exists() and (not root.is_dir() or (any(root.iterdir()) and not (root / "synthetic.json").exists())):
        raise DataError(f"refusing to replace {root}: it exists but is not a synthetic data set (no synthetic.json)")
    root.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f"{root.name}.partial-", dir=root.parent))
    try:
        with tqdm(total=sum(params["n_clips"].values()), desc="synthetic clips", unit="clip",
                  disable=not (progress and progress_visible())) as bar:
            for index in range(len(SPLITS)):
                _write_split(partial, index, params, bar)
        atomic_write_json(partial / "synthetic.json", params)
        _swap_in(partial, root)
    finally:
        shutil.rmtree(partial, ignore_errors=True)  # gone already after a successful swap
    return summary(False)


def load_truth(root, split) -> sp.csr_matrix:
    """The split's truth matrix, checked against its captions CSV so rows and columns line up."""
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}; expected one of {SPLITS}")
    path, captions = Path(root) / f"synthetic_truth_{split}.npz", Path(root) / f"clotho_captions_{split}.csv"
    for required in (path, captions):
        if not required.is_file():
            raise DataError(f"{required} is missing; generate the set with generate_synthetic_clotho")
    try:
        truth = sp.csr_matrix(sp.load_npz(path))
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as error:
        raise DataError(f"{path} is not a readable truth matrix: {error}") from error
    rows = len(pd.read_csv(captions))
    if truth.shape != (rows, CAPTIONS_PER_CLIP * rows):
        raise DataError(f"{path} has shape {truth.shape} but {captions} has {rows} rows "
                        f"(expected {(rows, CAPTIONS_PER_CLIP * rows)})")
    return truth


def truth_statistics(truth) -> dict:
    """How ambiguous the captions are: SALSA's premise is that many describe more than their own clip."""
    truth = sp.csr_matrix(truth, dtype=bool)
    per_caption = np.asarray(truth.sum(axis=0)).ravel()
    per_clip = np.asarray(truth.sum(axis=1)).ravel()
    return {"n_clips": truth.shape[0], "n_captions": truth.shape[1],
            "matches_per_caption": per_caption, "captions_per_clip": per_clip,
            "min_matches": int(per_caption.min()), "median_matches": float(np.median(per_caption)),
            "mean_matches": float(per_caption.mean()), "max_matches": int(per_caption.max()),
            "fraction_matching_one": float(np.mean(per_caption == 1)),
            "mean_captions_per_clip": float(per_clip.mean()),
            "density": truth.nnz / max(truth.shape[0] * truth.shape[1], 1)}


POOL_SPAWN_KEY = 1000  # the benchmark's splits use spawn keys 0-2 of the same seed: the streams never meet


def tagging_pool(n_clips: int, clip_seconds: float, sample_rate: int, seed: int = 0) -> tuple[np.ndarray, list[dict]]:
    """Clips drawn like the benchmark's (same sources, attributes and mixing), without captions.

    The stand-in for AudioSet in the tiny profile: the audio encoder is pretrained to tag these before
    it sees a caption. Rendered directly at ``sample_rate`` from a seed stream the benchmark never
    uses; ``pool_overlap`` checks that no clip repeats one of the benchmark's.
    """
    params = _parameters({"development": _integer("n_clips", n_clips, 1)}, clip_seconds, sample_rate, seed)
    n = round(params["clip_seconds"] * sample_rate)
    meta_seed, audio_seed = np.random.SeedSequence(seed, spawn_key=(POOL_SPAWN_KEY,)).spawn(2)
    meta_rng, clips = np.random.default_rng(meta_seed), []
    audio = np.empty((n_clips, n), dtype=np.float32)
    for i, clip_seed in enumerate(audio_seed.spawn(n_clips)):
        clip = {"snr_db": float(meta_rng.uniform(20, 35)), "peak": float(meta_rng.uniform(0.6, 0.9)),
                "events": sample_events(meta_rng, n)}
        audio[i] = render(np.random.default_rng(clip_seed), clip, n, sample_rate)
        clips.append(clip)
    return audio, clips


def clip_signature(clip: dict, n_samples: int) -> str:
    """What makes two clips the same regardless of sample rate: their events and where they lie."""
    return json.dumps([[e["source"], e["attributes"], round(e["onset_sample"] / n_samples, 3),
                        round(e["offset_sample"] / n_samples, 3), round(e["gain_db"], 1)] for e in clip["events"]],
                      sort_keys=True)


def pool_overlap(pool_clips: list[dict], pool_samples: int, root) -> list[tuple[int, str, str]]:
    """(pool index, benchmark split, file name) of every pool clip that repeats a benchmark clip."""
    pool = {clip_signature(c, pool_samples): i for i, c in enumerate(pool_clips)}
    hits = []
    for split in SPLITS:
        record = json.loads((Path(root) / f"synthetic_events_{split}.json").read_text(encoding="utf-8"))
        n = round(record["clip_seconds"] * record["sample_rate"])
        hits += [(pool[sig], split, c["file_name"]) for c in record["clips"]
                 if (sig := clip_signature(c, n)) in pool]
    return hits
