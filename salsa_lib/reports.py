"""Tables and figures under results/<profile>/: written atomically, named by what they show.

Tables on disk hold metrics as fractions (``mAP@10`` 0.5458) under the paper's metric names; what a
notebook shows a reader is in percent with two decimals (``percent_view``).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from salsa_lib import paths
from salsa_lib.files import atomic_path, atomic_write_csv, atomic_write_text


METRICS = ("mAP@10", "R@1", "R@5", "R@10")  # retrieval metrics in the order every shown table uses


def percent_view(frame: pd.DataFrame, fractions=(), points=()) -> pd.DataFrame:
    """``frame`` as a reader sees it: each column of ``fractions`` in percent with two decimals and its
    header marked ``(%)``; each column of ``points`` (already in percent or percentage points) with two
    decimals. Cells become text ("54.58", "n/a" for a missing value), so every row shows both decimals."""
    def text(values, scale):
        return [f"{scale * v:.2f}" if pd.notna(v) else "n/a" for v in values]

    shown = frame.copy()
    for column in (*fractions, *points):
        shown[column] = text(frame[column], 100 if column in fractions else 1)
    return shown.rename(columns={c: f"{c} (%)" for c in fractions})


def table_path(profile: str, name: str) -> Path:
    return paths.results_dir(profile) / "tables" / f"{name}.csv"


def write_table(frame: pd.DataFrame, profile: str, name: str) -> Path:
    path = table_path(profile, name)
    atomic_write_csv(path, frame)
    return path


def write_text(text: str, profile: str, name: str) -> Path:
    """A written result (markdown) beside the tables it was computed from."""
    path = paths.results_dir(profile) / "tables" / f"{name}.md"
    atomic_write_text(path, text)
    return path


def figure_path(profile: str, name: str) -> Path:
    return paths.results_dir(profile) / "figures" / f"{name}.png"


def save_figure(fig, profile: str, name: str) -> None:
    """Write ``fig`` to ``figure_path(profile, name)``. Returns nothing: a notebook cell that ends with
    it shows the figure and no echoed path."""
    with atomic_path(figure_path(profile, name), suffix=".png") as tmp:
        fig.savefig(tmp, dpi=120, bbox_inches="tight")
