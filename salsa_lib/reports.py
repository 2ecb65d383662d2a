"""Tables and figures under results/<profile>/: written atomically, named by what they show."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from salsa_lib import paths
from salsa_lib.files import atomic_path, atomic_write_csv, atomic_write_text


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
