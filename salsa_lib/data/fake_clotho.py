"""A generated folder shaped like ClothoV2.1, for the paper-shape dry run (profile ``clotho-dryrun``).

Why: the paper profile must be provable end to end without a GPU, a network or the 8 GB download. The
fake release has what the real one has and the loader depends on: a 7z archive per split holding
``<split>/<file name>.wav`` (15-30 s, 44.1 kHz, 16-bit mono), captions CSVs with quoted captions that
contain commas, metadata CSVs with Clotho's columns (``sound_id`` among them), and an md5 table. It is
installed through ``clotho.download_clotho`` itself (md5 checks, safe extraction, completion markers),
with a downloader that copies from the local mirror instead of Zenodo. The audio is coloured noise and
tones, not real sounds: the dry run proves that the code runs, never what a model learns.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import numpy as np
import py7zr
import soundfile as sf

from salsa_lib.data.clotho import archive_name, csv_names, download_clotho
from salsa_lib.data.reference_queries import readme_example_queries
from salsa_lib.data.splits import CAPTION_COLUMNS, CAPTIONS_PER_CLIP
from salsa_lib.files import atomic_write_json, file_digest

METADATA_COLUMNS = ["file_name", "keywords", "sound_id", "sound_link", "start_end_samples", "manufacturer",
                    "license"]
SOURCE_RATE = 44100  # ClothoV2's rate: the loader's resampling to 32 kHz is exercised
_WORDS = ("a dog barks", "rain falls", "on a tin roof", "while people talk", "in the distance",
          "a car passes", "birds chirp", "loudly", "softly", "near a river", "and a door creaks",
          "as wind blows", "through the trees", "then stops")


def _caption(rng: np.random.Generator, index: int) -> str:
    """8-20 words, capitalised, with a comma inside (the CSV must quote it) and a full stop."""
    words: list[str] = []
    while len(words) < 8:
        words += rng.choice(_WORDS).split()
    words = words[:20]
    cut = int(rng.integers(2, len(words) - 2))
    text = " ".join(words[:cut]) + ", " + " ".join(words[cut:])
    return f"{text[0].upper()}{text[1:]} ({index})."


def _clip(rng: np.random.Generator, seconds: float) -> np.ndarray:
    """Quiet tone over brown-ish noise: cheap to compress, not silent, clipped to int16 range."""
    t = np.arange(int(seconds * SOURCE_RATE)) / SOURCE_RATE
    tone = 0.1 * np.sin(2 * np.pi * rng.uniform(200, 2000) * t)
    noise = np.cumsum(rng.normal(0, 0.002, t.size)).clip(-0.2, 0.2)
    return (tone + noise).astype(np.float32)


def _split_rows(split: str, n_clips: int, rng: np.random.Generator, sound_ids: list[int]):
    """Captions and metadata rows; the evaluation split holds the original README's two queries."""
    examples = readme_example_queries()
    captions, metadata = [], []
    for i in range(n_clips):
        name = f"{split} clip {i:02d}, take {i % 3}.wav"  # spaces and a comma, as Clotho names have
        texts = [_caption(rng, k) for k in range(CAPTIONS_PER_CLIP)]
        if split == "evaluation" and i < examples["query"].nunique():
            texts[0] = examples["query"].unique()[i]
        sound_id = sound_ids[i]
        captions.append([name, *texts])
        metadata.append([name, "fake;generated;dry-run", sound_id, f"https://freesound.org/s/{sound_id}/",
                         "[0, 0]", "nobody", "http://creativecommons.org/publicdomain/zero/1.0/"])
    return captions, metadata


def _sound_ids(split: str, n_clips: int) -> list[int]:
    """Evaluation: query 1's associated clip first (158513), then published result ids, so the
    notebook's id mapping and overlap count see both matches and misses; other splits: made up."""
    if split != "evaluation":
        return [900000 + 1000 * len(split) + i for i in range(n_clips)]
    examples = readme_example_queries()
    associated = examples.loc[examples["associated"] == "✓", "sound_id"].tolist()
    others = [s for s in examples["sound_id"].tolist() if s not in associated]
    return (associated + others + [990000 + i for i in range(n_clips)])[:n_clips]


def _write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, quoting=csv.QUOTE_MINIMAL, lineterminator="\r\n")
    writer.writerow(header)
    writer.writerows(rows)
    path.write_text(buffer.getvalue(), encoding="utf-8")


def build_mirror(mirror: Path, n_clips: dict[str, int], seed: int = 0) -> dict[str, str]:
    """Write the fake release files into ``mirror``; returns their md5 table (like ``CLOTHO_FILES``)."""
    rng = np.random.default_rng(seed)
    mirror.mkdir(parents=True, exist_ok=True)
    for split, count in n_clips.items():
        captions, metadata = _split_rows(split, count, rng, _sound_ids(split, count))
        captions_csv, metadata_csv = csv_names(split)
        _write_csv(mirror / captions_csv, ["file_name", *CAPTION_COLUMNS], captions)
        _write_csv(mirror / metadata_csv, METADATA_COLUMNS, metadata)
        staging = mirror / f".staging-{split}"
        shutil.rmtree(staging, ignore_errors=True)
        (staging / split).mkdir(parents=True)
        for row in captions:
            sf.write(staging / split / row[0], _clip(rng, rng.uniform(15.0, 30.0)), SOURCE_RATE, subtype="PCM_16")
        with py7zr.SevenZipFile(mirror / archive_name(split), "w",
                                filters=[{"id": py7zr.FILTER_LZMA2, "preset": 1}]) as archive:
            archive.writeall(staging / split, arcname=split)
        shutil.rmtree(staging)
    return {p.name: file_digest(p, "md5") for p in sorted(mirror.iterdir()) if p.is_file()}


def install_fake_clotho(root: str | Path, n_clips: dict[str, int], seed: int = 0) -> Path:
    """Build the mirror once, then install it into ``root`` with ClothoV2's own download code."""
    root = Path(root)
    mirror = root.parent / f"{root.name}_mirror"
    table_path = mirror / "md5.json"
    wanted = {"n_clips": n_clips, "seed": seed}
    stored = json.loads(table_path.read_text()) if table_path.exists() else {}
    if stored.get("request") != wanted:
        shutil.rmtree(mirror, ignore_errors=True)
        shutil.rmtree(root, ignore_errors=True)
        files = build_mirror(mirror, n_clips, seed)
        atomic_write_json(table_path, {"request": wanted, "files": files})
    else:
        files = stored["files"]

    def copy_from_mirror(url: str, output_file, pooch_obj) -> None:
        name = url.rsplit("/", 1)[-1]
        shutil.copyfile(mirror / name, output_file)

    return download_clotho(root, splits=list(n_clips), files=files, base_url="mirror/{file}",
                           downloader=copy_from_mirror, progress=False)
