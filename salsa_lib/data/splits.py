"""ClothoV2-layout splits: captions CSV + audio folder -> validated captions and a decoded-audio cache.

Layout (ClothoV2, the synthetic set and users' own data alike)::

    <root>/<split>/<file_name>            audio (wav/flac/ogg/mp3, any rate, any channels)
    <root>/clotho_captions_<split>.csv    file_name, caption_1 ... caption_5

Errors name the file and, for CSV problems, the 1-based line of the file and the column, so a
user can open the CSV and fix the exact cell.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from salsa_lib.core.captions import preprocess_caption
from salsa_lib.data.audio import SAMPLE_RATE, crop_or_pad
from salsa_lib.data.audio_cache import AudioCache, build_audio_cache
from salsa_lib.errors import ConfigError, DataError
from salsa_lib.files import atomic_write_csv

CAPTIONS_PER_CLIP = 5  # ClothoV2: every clip has five captions, stored clip-major (caption j -> clip j // 5)
CAPTION_COLUMNS = [f"caption_{k}" for k in range(1, CAPTIONS_PER_CLIP + 1)]
# the three splits by their role -> their ClothoV2 folder and CSV names
SPLIT_FOLDERS = {"train": "development", "val": "validation", "test": "evaluation"}
REQUIRED_COLUMNS = ["file_name", *CAPTION_COLUMNS]
SKIPPED_COLUMNS = ["file_name", "csv_row", "reason"]


def caption_clips(n_clips: int) -> np.ndarray:
    """The clip each caption of a split was written for: 0, 0, 0, 0, 0, 1, ... (clip-major order)."""
    return np.repeat(np.arange(n_clips), CAPTIONS_PER_CLIP)


def captions_csv_path(root: str | os.PathLike, split: str) -> Path:
    return Path(root) / f"clotho_captions_{split}.csv"


def read_captions_csv(path: str | os.PathLike) -> pd.DataFrame:
    """Read and validate a captions CSV.

    Returns the columns ``file_name, caption_1..caption_5`` (raw caption text, file names stripped)
    plus ``csv_row``: the 1-based line of the file where each record starts, for later messages.
    Parsed with the csv module rather than pandas so that line numbers stay exact even when a quoted
    caption spans several lines.
    """
    path = Path(path)
    header, records, lines = _parse_csv(path, _read_utf8(path))
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)} (found: {', '.join(header)})")
    columns = [header.index(c) for c in REQUIRED_COLUMNS]
    rows = [[record[k] for k in columns] for record in records]
    frame = pd.DataFrame(rows, columns=REQUIRED_COLUMNS, dtype=object)
    frame["file_name"] = frame["file_name"].str.strip()
    frame["csv_row"] = lines
    _validate_rows(path, frame)
    return frame


def _read_utf8(path: Path) -> str:
    try:
        raw = path.read_bytes()
    except FileNotFoundError as exc:
        raise DataError(f"{path}: captions CSV not found") from exc
    except OSError as exc:
        raise DataError(f"{path}: cannot read captions CSV ({exc.strerror or exc})") from exc
    try:
        return raw.decode("utf-8-sig")  # tolerate the BOM spreadsheet programs write
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise DataError(
            f"{path}: not UTF-8 (byte 0x{raw[exc.start]:02x} at byte offset {exc.start}, line {line}); "
            "re-save the file with UTF-8 encoding"
        ) from exc


def _parse_csv(path: Path, text: str) -> tuple[list[str], list[list[str]], list[int]]:
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = [name.strip() for name in next(reader)]
    except StopIteration:
        raise DataError(f"{path}: empty file (no header row)") from None
    except csv.Error as exc:
        raise DataError(f"{path}: line 1: malformed CSV header ({exc})") from exc
    records, lines = [], []
    start = reader.line_num + 1
    while True:
        try:
            record = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            raise DataError(f"{path}: line {start}: malformed CSV ({exc})") from exc
        if any(cell.strip() for cell in record):  # blank lines are not clips
            if len(record) != len(header):
                raise DataError(f"{path}: line {start}: {len(record)} fields, header has {len(header)}")
            records.append(record)
            lines.append(start)
        start = reader.line_num + 1
    return header, records, lines


def _validate_rows(path: Path, frame: pd.DataFrame) -> None:
    first_line: dict[str, int] = {}
    for row in frame.itertuples(index=False):
        where = f"{path}: line {row.csv_row}"
        if not row.file_name:
            raise DataError(f"{where}, column 'file_name': empty file name")
        if row.file_name in first_line:
            raise DataError(
                f"{where}, column 'file_name': duplicate file name {row.file_name!r} "
                f"(first listed on line {first_line[row.file_name]})"
            )
        first_line[row.file_name] = row.csv_row
        for column in CAPTION_COLUMNS:
            text = getattr(row, column)
            if not text.strip():
                raise DataError(f"{where}, column {column!r}: empty caption for {row.file_name!r}")
            if not preprocess_caption(text).strip():
                raise DataError(
                    f"{where}, column {column!r}: caption {text!r} for {row.file_name!r} "
                    "is empty after removing punctuation"
                )


@dataclass
class ClothoSplit:
    """One split: clip names, their 5 raw captions and the decoded audio, all aligned by clip index."""

    root: Path
    split: str
    file_names: list[str]
    captions: list[list[str]]
    audio: AudioCache
    skipped: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=SKIPPED_COLUMNS))

    @property
    def n_clips(self) -> int:
        return len(self.file_names)

    @property
    def n_captions(self) -> int:
        return sum(len(c) for c in self.captions)

    def caption(self, i: int) -> str:
        """Raw caption of flat item ``i`` (clip-major: clip i // 5, caption i % 5)."""
        return self.captions[i // CAPTIONS_PER_CLIP][i % CAPTIONS_PER_CLIP]

    def durations(self) -> np.ndarray:
        return np.asarray(self.audio.lengths, dtype=np.float64) / self.audio.sample_rate


def load_split(
    root: str | os.PathLike,
    split: str,
    *,
    cache_dir: str | os.PathLike,
    sample_rate: int = SAMPLE_RATE,
    skip_bad_clips: bool = False,
    progress: bool = True,
    verify_cache: bool = True,
) -> ClothoSplit:
    """Validate a split and build (or reuse) its audio cache at ``cache_dir/<split>_<sample_rate>``.

    With ``skip_bad_clips`` missing or undecodable clips are dropped with their captions and listed
    in ``cache_dir/<split>_skipped.csv``; otherwise the first one is a DataError naming file and row.
    """
    root, cache_dir = Path(root), Path(cache_dir)
    csv_path = captions_csv_path(root, split)
    frame = read_captions_csv(csv_path)
    rows = dict(zip(frame["file_name"], frame["csv_row"]))
    skipped: list[tuple[str, int, str]] = []
    present = []
    for name in frame["file_name"]:
        audio_path = root / split / name
        if audio_path.is_file():
            present.append(name)
        elif skip_bad_clips:
            skipped.append((name, rows[name], "missing file"))
        else:
            raise DataError(f"{csv_path}: line {rows[name]}: audio file {audio_path} is listed but missing")
    audio = _build_cache(csv_path, root / split, present, rows, cache_dir / f"{split}_{sample_rate}",
                         sample_rate=sample_rate, skip_bad=skip_bad_clips, progress=progress, verify=verify_cache)
    skipped += [(name, rows[name], reason) for name, reason in audio.skipped]
    report = pd.DataFrame(sorted(skipped, key=lambda s: s[1]), columns=SKIPPED_COLUMNS)
    if skip_bad_clips:
        atomic_write_csv(cache_dir / f"{split}_skipped.csv", report)
    if len(audio) == 0:
        raise DataError(f"{csv_path}: no usable clips in split {split!r} ({len(report)} skipped)")
    kept = frame.set_index("file_name").loc[audio.names]
    captions = kept[CAPTION_COLUMNS].values.tolist()
    return ClothoSplit(root, split, list(audio.names), captions, audio, report)


def _build_cache(csv_path: Path, audio_dir: Path, names: list[str], rows: dict, cache_path: Path, **kwargs):
    """Build the cache, adding the CSV line to a decode error so the user can find the listing."""
    files = [audio_dir / n for n in names]
    try:
        return build_audio_cache(files, cache_path, names=names, **kwargs)
    except DataError as exc:
        name = dict(zip(files, names)).get(Path(getattr(exc, "path", "")))
        if name is None:
            raise
        raise DataError(f"{csv_path}: line {rows[name]}: {exc}") from exc


class AudioCaptionDataset(Dataset):
    """Training/validation items: one per (clip, caption) pair, clip-major (item i -> clip i // 5).

    Random crops come from a generator seeded by (seed, epoch, i): reproducible across runs and
    worker counts, different every epoch. Call ``set_epoch`` before creating each epoch's iterator
    (DataLoader workers copy the dataset when the iterator starts; avoid ``persistent_workers``).
    """

    def __init__(self, split: ClothoSplit, seconds: float, train: bool, seed: int = 0):
        if seconds <= 0:
            raise ConfigError(f"seconds must be positive, got {seconds}")
        self.split, self.train, self.seed, self.epoch = split, bool(train), int(seed), 0
        self.n_samples = int(round(seconds * split.audio.sample_rate))
        self.captions = [preprocess_caption(c) for clip in split.captions for c in clip]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.captions)

    def __getitem__(self, i: int) -> dict:
        if not 0 <= i < len(self):
            raise IndexError(f"item {i} out of range for {len(self)} items")
        audio_idx = i // CAPTIONS_PER_CLIP
        rng = np.random.default_rng([self.seed, self.epoch, i]) if self.train else None
        wave, audio_length = crop_or_pad(self.split.audio[audio_idx], self.n_samples, rng)
        return {"audio": torch.from_numpy(wave), "audio_length": float(audio_length),
                "caption": self.captions[i], "idx": int(i), "audio_idx": audio_idx}


class ClipDataset(Dataset):
    """One item per clip (deterministic crop from the start), for embedding audio at evaluation."""

    def __init__(self, split: ClothoSplit, seconds: float):
        if seconds <= 0:
            raise ConfigError(f"seconds must be positive, got {seconds}")
        self.split = split
        self.n_samples = int(round(seconds * split.audio.sample_rate))

    def __len__(self) -> int:
        return self.split.n_clips

    def __getitem__(self, i: int) -> dict:
        if not 0 <= i < len(self):
            raise IndexError(f"clip {i} out of range for {len(self)} clips")
        wave, audio_length = crop_or_pad(self.split.audio[i], self.n_samples)
        return {"audio": torch.from_numpy(wave), "audio_length": float(audio_length), "audio_idx": int(i)}


def split_fingerprint(split: ClothoSplit) -> str:
    """Identifies a split's clips and captions in order: whatever was computed from it must match."""
    digest = hashlib.sha256()
    for name, captions in zip(split.file_names, split.captions):
        digest.update("\x1f".join([name, *captions]).encode() + b"\x1e")
    return digest.hexdigest()
