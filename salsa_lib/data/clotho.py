"""Fetch and unpack ClothoV2.1 so that a rerun is cheap, an interruption is harmless and a failure says what to do.

Downloads go through ``pooch`` (md5-checked, written to a temporary file first), archives are unpacked with
``py7zr`` into a temporary folder that is renamed into place only when complete, and a small ``.complete``
marker (written last) lets the next call skip a split without touching the network.
"""

from __future__ import annotations

import contextlib
import json
import lzma
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterable, Mapping

import pooch
import py7zr
import requests

from salsa_lib.data.splits import SPLIT_FOLDERS
from salsa_lib.errors import ConfigError, DataError, DownloadError
from salsa_lib.files import atomic_write_json

CLOTHO_SPLITS = tuple(SPLIT_FOLDERS.values())
CLOTHO_URL = "https://zenodo.org/record/4783391/files/{file}?download=1"
CLOTHO_FILES = {
    "clotho_audio_development.7z": "c8b05bc7acdb13895bb3c6a29608667e",
    "clotho_captions_development.csv": "d4090b39ce9f2491908eebf4d5b09bae",
    "clotho_metadata_development.csv": "170d20935ecfdf161ce1bb154118cda5",
    "clotho_audio_validation.7z": "7dba730be08bada48bd15dc4e668df59",
    "clotho_captions_validation.csv": "5879e023032b22a2c930aaa0528bead4",
    "clotho_metadata_validation.csv": "2e010427c56b1ce6008b0f03f41048ce",
    "clotho_audio_evaluation.7z": "4569624ccadf96223f19cb59fe4f849f",
    "clotho_captions_evaluation.csv": "1b16b9e57cf7bdb7f13a13802aeb57e2",
    "clotho_metadata_evaluation.csv": "13946f054d4e1bf48079813aac61bf77",
}
MARKER = ".complete"
_RETRY_WAIT_S = 2.0
# What a failed fetch raises: requests' errors from the HTTP downloader, ValueError from pooch's hash check,
# OSError from the other pooch downloaders (ftplib, sockets) and from local copies.
_FETCH_ERRORS = (requests.exceptions.RequestException, ValueError, OSError)
# What a damaged archive raises while py7zr parses or decompresses it.
_ARCHIVE_ERRORS = (py7zr.exceptions.ArchiveError, py7zr.exceptions.PasswordRequired, lzma.LZMAError, EOFError)
Downloader = Callable[[str, str, object], object]


def archive_name(split: str) -> str:
    return f"clotho_audio_{split}.7z"


def csv_names(split: str) -> tuple[str, str]:
    return f"clotho_captions_{split}.csv", f"clotho_metadata_{split}.csv"


def local_path(root: str | os.PathLike, name: str) -> Path:
    """Archives live apart from the CSVs so that deleting them never touches what the loader reads."""
    root = Path(root)
    return root / "archives" / name if name.endswith(".7z") else root / name


def _member_problem(info) -> str | None:
    """Judge a member by its name alone, before anything is written: a name resolved on disk can already escape."""
    name = info.filename
    if info.is_symlink:
        return "is a symbolic link"
    if not (info.is_file or info.is_directory):
        return "is neither a regular file nor a folder"
    if name.startswith(("/", "\\")):
        return "is an absolute path"
    if re.match(r"^[A-Za-z]:", name):
        return "starts with a drive letter"
    if ".." in re.split(r"[/\\]", name):
        return "contains a '..' component"
    if "\x00" in name:
        return "contains a NUL byte"
    return None


def _extract_checked(archive: Path, dest: Path) -> list[str]:
    """Refuse the whole archive on the first unsafe member, so a hostile archive leaves no file behind."""
    with py7zr.SevenZipFile(archive, mode="r") as sz:
        infos = sz.list()
        for info in infos:
            problem = _member_problem(info)
            if problem:
                raise DataError(f"{archive}: refusing to extract member {info.filename!r}: it {problem}")
        dest.mkdir(parents=True, exist_ok=True)
        sz.extractall(path=dest)
    return [info.filename for info in infos if info.is_file]


def extract_7z_safely(archive: str | os.PathLike, dest: str | os.PathLike) -> list[str]:
    """Unpack ``archive`` into ``dest`` after vetting every member name; return the regular files' member names.

    Raises DataError for an unsafe member (nothing is extracted) or a damaged archive (``dest`` may then
    hold partial files, so callers that need atomicity should pass a fresh temporary folder).
    """
    archive = Path(archive)
    try:
        return _extract_checked(archive, Path(dest))
    except _ARCHIVE_ERRORS as err:
        raise DataError(f"{archive}: damaged or unreadable 7z archive ({type(err).__name__}: {err})") from err


def _count_files(folder: Path) -> int:
    return sum(1 for p in folder.rglob("*") if p.is_file() and p.name != MARKER)


def _audio_complete(root: Path, split: str, archive_md5: str | None = None) -> bool:
    """Trust the marker only if it matches the archive we would fetch and no file has gone missing since."""
    marker = root / split / MARKER
    try:
        info = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if archive_md5 is not None and info.get("md5") != archive_md5:
        return False
    return _count_files(root / split) == info.get("files")


def _has_md5(path: Path, md5: str) -> bool:
    return path.is_file() and pooch.file_hash(str(path), alg="md5") == md5


def _needed(root: Path, split: str, files: Mapping[str, str]) -> list[str]:
    """Only what is absent or wrong: a complete audio folder needs no archive, a good CSV no download."""
    need = [n for n in csv_names(split) if not _has_md5(local_path(root, n), files[n])]
    if not _audio_complete(root, split, files[archive_name(split)]):
        need.insert(0, archive_name(split))
    return need


def _with_retries(download: Downloader, retries: int) -> Downloader:
    """Zenodo drops connections now and then; a short back-off usually gets a multi-GB archive through."""

    attempts = max(retries, 0) + 1

    def attempt(url, output_file, pooch_obj):
        for i in range(attempts):
            try:
                return download(url, output_file, pooch_obj)
            except requests.exceptions.RequestException:
                if i == attempts - 1:
                    raise
                time.sleep(_RETRY_WAIT_S * (i + 1))

    return attempt


def _fetch(root: Path, name: str, md5: str, base_url: str, download: Downloader) -> None:
    target = local_path(root, name)
    pooch.retrieve(
        base_url.format(file=name), known_hash=f"md5:{md5}", fname=name, path=target.parent, downloader=download
    )


def _replace_dir(src: Path, dst: Path) -> None:
    """Swap in the new tree with renames, so ``dst`` is at every moment absent, old, or complete."""
    stale = Path(tempfile.mkdtemp(prefix=f".stale-{dst.name}-", dir=dst.parent))
    try:
        if dst.exists():
            dst.rename(stale / "old")
        src.rename(dst)
    finally:
        shutil.rmtree(stale, ignore_errors=True)


def _install_split(root: Path, split: str, archive: Path, md5: str) -> None:
    """Extract beside the target and rename, so an interrupted run never leaves a half-filled split folder."""
    for stale in [*root.glob(f".extract-{split}-*"), *root.glob(f".stale-{split}-*")]:
        shutil.rmtree(stale, ignore_errors=True)  # left by a run that was killed mid-extraction
    tmp = Path(tempfile.mkdtemp(prefix=f".extract-{split}-", dir=root))
    try:
        _extract_checked(archive, tmp)
        entries = list(tmp.iterdir())
        single_dir = len(entries) == 1 and entries[0].is_dir() and not entries[0].is_symlink()
        content = entries[0] if single_dir else tmp  # tolerate archives without the '<split>/' prefix
        atomic_write_json(content / MARKER, {"archive": archive.name, "md5": md5, "files": _count_files(content)})
        _replace_dir(content, root / split)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _failure_message(root: Path, failures: Mapping[str, BaseException], files, base_url: str) -> str:
    lines = [f"Could not fetch or verify {len(failures)} Clotho file(s):"]
    for name, err in failures.items():
        target = local_path(root, name)
        lines.append(f"  - {name}: {type(err).__name__}: {err}")
        if isinstance(err, _ARCHIVE_ERRORS):
            lines.append(f"      the archive at {target} has the right md5 but cannot be unpacked; replace it")
        elif target.is_file():
            lines.append(f"      the file already at {target} has the wrong md5; replace it")
        lines.append(f"      URL:         {base_url.format(file=name)}")
        lines.append(f"      place it at: {target}  (expected md5 {files[name]})")
    lines.append(
        "Download each file by hand (a browser works) and put it at the path shown, then rerun the same "
        "command: files already in place are checked against their md5 and used without network."
    )
    return "\n".join(lines)


def _check_table(splits: Iterable[str], files: Mapping[str, str]) -> list[str]:
    splits = list(splits)
    for split in splits:
        absent = [n for n in (archive_name(split), *csv_names(split)) if n not in files]
        if absent:
            raise ConfigError(f"split {split!r}: no md5 known for {absent}; known splits: {CLOTHO_SPLITS}")
    return splits


def download_clotho(
    root: str | os.PathLike,
    splits: Iterable[str] = CLOTHO_SPLITS,
    *,
    files: Mapping[str, str] | None = None,
    base_url: str = CLOTHO_URL,
    downloader: Downloader | None = None,
    progress: bool = True,
    keep_archives: bool = True,
    retries: int = 3,
) -> Path:
    """Make ``root`` hold the requested splits in the loader's layout, fetching only what is missing.

    All missing files are attempted before failing, so one DownloadError lists everything to place by hand.
    An unsafe archive member raises DataError instead: that is not something a retry can fix.
    """
    root = Path(root)
    files = CLOTHO_FILES if files is None else files
    splits = _check_table(splits, files)
    root.mkdir(parents=True, exist_ok=True)
    needs = {split: _needed(root, split, files) for split in splits}
    if not any(needs.values()):
        return root
    download = _with_retries(downloader or pooch.HTTPDownloader(progressbar=progress), retries)
    failures: dict[str, BaseException] = {}
    for name in [n for need in needs.values() for n in need]:
        try:
            _fetch(root, name, files[name], base_url, download)
        except _FETCH_ERRORS as err:
            failures[name] = err
    for split, need in needs.items():
        name = archive_name(split)
        if name not in need or name in failures:
            continue
        try:
            _install_split(root, split, local_path(root, name), files[name])
        except _ARCHIVE_ERRORS as err:
            failures[name] = err
            continue
        if not keep_archives:
            local_path(root, name).unlink(missing_ok=True)
            with contextlib.suppress(OSError):  # only succeeds once the folder is empty
                local_path(root, name).parent.rmdir()
    if failures:
        raise DownloadError(_failure_message(root, failures, files, base_url)) from next(iter(failures.values()))
    return root


def clotho_status(root: str | os.PathLike, splits: Iterable[str] = CLOTHO_SPLITS) -> dict:
    """Say per split what is there without hashing anything big, so a notebook can show it on every run."""
    root = Path(root)
    status = {}
    for split in splits:
        audio_ok = _audio_complete(root, split)
        missing = [n for n in csv_names(split) if not local_path(root, n).is_file()]
        if not audio_ok:
            missing.insert(0, f"{split}/ (audio)")
        folder = root / split
        status[split] = {
            "complete": not missing,
            "wav_files": len(list(folder.glob("*.wav"))) if folder.is_dir() else 0,
            "archive_present": local_path(root, archive_name(split)).is_file(),
            "missing": missing,
        }
    return status
