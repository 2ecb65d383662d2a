"""Tables and figures under results/<profile>/: written atomically, named by what they show."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from salsa_lib import paths
from salsa_lib.files import atomic_path, atomic_write_csv


def table_path(profile: str, name: str) -> Path:
    return paths.results_dir(profile) / "tables" / f"{name}.csv"


def write_table(frame: pd.DataFrame, profile: str, name: str) -> Path:
    path = table_path(profile, name)
    atomic_write_csv(path, frame)
    return path


def save_figure(fig, profile: str, name: str) -> Path:
    path = paths.results_dir(profile) / "figures" / f"{name}.png"
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=120, bbox_inches="tight")
    return path


def plot_log_mel(ax, wave: np.ndarray, sample_rate: int, title: str = "") -> None:
    """A log-mel spectrogram in the PaSST front end's resolution (25 ms windows, 10 ms hop)."""
    import librosa

    mel = librosa.feature.melspectrogram(y=wave, sr=sample_rate, n_fft=1024, win_length=800,
                                         hop_length=320, n_mels=128)
    ax.imshow(np.log(mel + 1e-5), origin="lower", aspect="auto", cmap="magma",
              extent=(0, len(wave) / sample_rate, 0, 128))
    ax.set(xlabel="time (s)", ylabel="mel bin", title=title)


def run_metadata() -> dict:
    """Provenance stored beside every result: code version, package versions, when and where."""
    import platform
    import subprocess
    import time
    from importlib.metadata import PackageNotFoundError, version

    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=paths.REPO_ROOT, capture_output=True,
                                text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    versions = {}
    for name in ("torch", "lightning", "transformers", "hear21passt", "numpy", "librosa"):
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = None
    return {"git_commit": commit, "versions": versions, "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores"}


def plot_correspondence_bars(ax, scores: np.ndarray, associated: int, truly: set[int] | None = None,
                             top_n: int = 50, title: str = "") -> None:
    """The paper's figure: one caption's top-n estimated correspondences over clips, as bars.

    Red: the clip the caption was written for; green (synthetic only): other clips it truly describes.
    """
    order = np.argsort(-scores)[:top_n]
    truly = truly or set()
    colors = ["tab:red" if i == associated else "tab:green" if i in truly else "tab:gray" for i in order]
    ax.bar(np.arange(len(order)), scores[order], color=colors)
    ax.set(xlabel=f"top {len(order)} clips by estimated correspondence", ylabel="estimate", title=title)
    ax.set_xticks([])
