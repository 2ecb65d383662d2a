"""The project's two recurring pictures: a clip's log-mel spectrogram and the paper's correspondence bars."""

from __future__ import annotations

import numpy as np


def plot_log_mel(ax, wave: np.ndarray, sample_rate: int, title: str = "") -> None:
    """A log-mel spectrogram in the PaSST front end's resolution (25 ms windows, 10 ms hop)."""
    import librosa  # lazy: slow to import (numba), and only the pictures need it

    mel = librosa.feature.melspectrogram(y=wave, sr=sample_rate, n_fft=1024, win_length=800,
                                         hop_length=320, n_mels=128)
    ax.imshow(np.log(mel + 1e-5), origin="lower", aspect="auto", cmap="magma",
              extent=(0, len(wave) / sample_rate, 0, 128))
    ax.set(xlabel="time (s)", ylabel="mel bin", title=title)


def plot_correspondence_bars(ax, scores: np.ndarray, associated: int, truly: set[int] | None = None,
                             top_k: int = 50, title: str = "") -> None:
    """The paper's figure: one caption's top-n estimated correspondences over clips, as bars.

    Red: the clip the caption was written for; green (synthetic only): other clips it truly describes.
    """
    order = np.argsort(-scores)[:top_k]
    truly = truly or set()
    colors = ["tab:red" if i == associated else "tab:green" if i in truly else "tab:gray" for i in order]
    ax.bar(np.arange(len(order)), scores[order], color=colors)
    ax.set(xlabel=f"top {len(order)} clips by estimated correspondence", ylabel="estimate", title=title)
    ax.set_xticks([])
