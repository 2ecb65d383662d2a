"""The project's recurring pictures: a clip's log-mel spectrogram, one caption's correspondence bars, outlined cells."""

from __future__ import annotations

import numpy as np

TOP_DB = 80.0  # the spectrogram's dynamic range: anything more than this below the clip's peak is drawn as the floor

# the bars' colours and what they mean (plot_correspondence_bars draws its legend from these)
OWN_CLIP, OTHER_MATCH, NO_MATCH = "tab:red", "tab:green", "tab:gray"


def plot_log_mel(ax, wave: np.ndarray, sample_rate: int, title: str = "", colorbar: bool = False) -> None:
    """A log-mel spectrogram in the PaSST front end's resolution (25 ms windows, 10 ms hop, 128 mel bands),
    in dB relative to the clip's peak.

    ``colorbar=True`` adds a dB colour bar beside ``ax`` (for a full-size figure); leave it off for
    thumbnails drawn with the axes switched off (the query demo's).
    """
    import librosa  # lazy: slow to import (numba), and only the pictures need it

    mel = librosa.feature.melspectrogram(y=wave, sr=sample_rate, n_fft=1024, win_length=800,
                                         hop_length=320, n_mels=128)
    db = librosa.power_to_db(mel, ref=np.max(mel) if np.max(mel) > 0 else 1.0, top_db=TOP_DB)
    image = ax.imshow(db, origin="lower", aspect="auto", cmap="magma", vmin=-TOP_DB, vmax=0,
                      extent=(0, len(wave) / sample_rate, 0, 128))
    ax.grid(False)  # a style's grid (seaborn's whitegrid) would draw lines over the image
    ax.set(xlabel="time (s)", ylabel="mel band", title=title)
    if colorbar:
        ax.figure.colorbar(image, ax=ax, pad=0.01, label="dB (re peak)")


def correspondence_legend_handles(truth_known: bool = True) -> list:
    """Legend entries naming the colours of ``plot_correspondence_bars`` (for an axes or a whole figure)."""
    from matplotlib.patches import Patch

    handles = [Patch(color=OWN_CLIP, label="the caption's own clip")]
    if truth_known:
        return handles + [Patch(color=OTHER_MATCH, label="another clip it truly describes"),
                          Patch(color=NO_MATCH, label="a clip it does not describe")]
    return handles + [Patch(color=NO_MATCH, label="another clip")]


def plot_correspondence_bars(ax, scores: np.ndarray, associated: int, truly: set[int] | None = None,
                             top_k: int = 50, title: str = "", legend: bool = True) -> None:
    """One caption's top-k estimated correspondences over clips, as bars, highest first.

    Red: the clip the caption was written for; green: other clips it truly describes; grey: clips it
    does not describe. ``truly=None`` (the truth is unknown, as on ClothoV2): grey means "another clip".
    ``legend`` names the colours to the right of the axes, outside the bars (for several panels, draw
    one figure legend from ``correspondence_legend_handles`` instead).
    """
    order = np.argsort(-scores)[:top_k]
    known = truly is not None
    truly = truly or set()
    colors = [OWN_CLIP if i == associated else OTHER_MATCH if i in truly else NO_MATCH for i in order]
    ax.bar(np.arange(len(order)), scores[order], color=colors)
    ax.set(xlabel=f"the caption's top {len(order)} clips by estimated correspondence, highest first",
           ylabel="estimate", title=title, xlim=(-0.8, len(order) - 0.2))
    ax.set_xticks([])
    if legend:
        ax.legend(handles=correspondence_legend_handles(known), loc="upper left", bbox_to_anchor=(1.01, 1.0),
                  borderaxespad=0, fontsize=9, frameon=False)


def outline_cells(ax, mask: np.ndarray, color: str, lw: float = 2.0) -> None:
    """Outline each True cell of ``mask`` on a heatmap drawn with one unit per cell (seaborn's)."""
    from matplotlib.patches import Rectangle

    for row, column in zip(*np.nonzero(mask)):
        ax.add_patch(Rectangle((column, row), 1, 1, fill=False, edgecolor=color, lw=lw))
