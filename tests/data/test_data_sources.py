"""Where a data set and its audio cache live, as the README tells users to look for them."""

import hashlib
import re
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf

from salsa_lib.config import DataConfig
from salsa_lib.data import data_sources

OWN_DATA = Path(__file__).resolve().parent.parent.parent / "docs" / "own-data.md"


def _custom_set_with_a_missing_clip(root: Path) -> None:
    (root / "development").mkdir(parents=True)
    for name in ("a.wav", "b.wav"):
        sf.write(root / "development" / name, 0.1 * np.sin(np.arange(8000) / 20), 16000)
    captions = ",".join(f"a sound number {k}" for k in range(1, 6))
    rows = [f"{name},{captions}" for name in ("a.wav", "gone.wav", "b.wav")]  # gone.wav: CSV line 3
    (root / "clotho_captions_development.csv").write_text(
        "\n".join(["file_name," + ",".join(f"caption_{k}" for k in range(1, 6)), *rows]) + "\n")


def test_the_readme_names_where_skipped_custom_clips_are_listed(tmp_path, monkeypatch):
    monkeypatch.setenv("SALSA_HOME", str(tmp_path / "home"))
    root = tmp_path / "mine"
    _custom_set_with_a_missing_clip(root)
    config = DataConfig(dataset="custom", data_root=str(root), skip_bad_clips=True)
    data_sources.load_splits(config, splits=("train",), progress=False)

    section = OWN_DATA.read_text().split("## Laying out a data set")[1]
    stated = re.search(r"`(data/cache/[^`]*_skipped\.csv)`", section)[1]
    # the README's recipe for <hash>: the first 8 hex digits of the SHA-1 of the root's absolute path
    digest = hashlib.sha1(str(root.resolve()).encode()).hexdigest()[:8]
    path = tmp_path / "home" / stated.replace("<hash>", digest).replace("<split>", "development")
    report = pd.read_csv(path)
    assert list(report.file_name) == ["gone.wav"] and list(report.csv_row) == [3]
