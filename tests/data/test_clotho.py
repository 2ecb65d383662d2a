"""Tests for salsa_lib.data.clotho against a miniature Clotho "server" folder: no network is ever touched."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import py7zr
import pytest
import requests
import soundfile as sf

from salsa_lib.data import clotho
from salsa_lib.data.clotho import (
    CLOTHO_FILES,
    CLOTHO_SPLITS,
    CLOTHO_URL,
    clotho_status,
    download_clotho,
    extract_7z_safely,
)
from salsa_lib.errors import DataError, DownloadError

SPLITS = ("development", "validation")
URL = "https://example.invalid/clotho/{file}?download=1"


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def write_wav(path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    sf.write(path, (0.1 * rng.standard_normal(22050)).astype("float32"), 44100)  # 0.5 s


def write_csvs(folder: Path, split: str, wavs: list[str]) -> None:
    captions = {"file_name": wavs}
    captions.update({f"caption_{i}": [f"sound {w} number {i}" for w in wavs] for i in range(1, 6)})
    pd.DataFrame(captions).to_csv(folder / f"clotho_captions_{split}.csv", index=False)
    meta = {"file_name": wavs, "keywords": ["a;b"] * len(wavs), "sound_id": range(len(wavs)), "license": "CC0"}
    pd.DataFrame(meta).to_csv(folder / f"clotho_metadata_{split}.csv", index=False)


def pack(archive: Path, members: dict[str, Path]) -> None:
    with py7zr.SevenZipFile(archive, "w") as sz:
        for arcname, src in members.items():
            sz.write(src, arcname)


class Server:
    """A folder standing in for Zenodo, plus a downloader that copies from it and records every call."""

    def __init__(self, folder: Path, originals: dict[str, dict[str, Path]]):
        self.folder = folder
        self.originals = originals  # split -> {wav name: original file}
        self.files = {p.name: md5(p) for p in sorted(folder.iterdir()) if p.is_file()}
        self.calls: list[str] = []

    def download(self, url, output_file, pooch_obj):
        assert url.startswith("https://example.invalid/clotho/") and url.endswith("?download=1")
        name = url.rsplit("/", 1)[1].split("?")[0]
        self.calls.append(name)
        shutil.copyfile(self.folder / name, output_file)


@pytest.fixture
def server(tmp_path) -> Server:
    folder = tmp_path / "server"
    sources = tmp_path / "sources"
    folder.mkdir()
    originals = {}
    for k, split in enumerate(SPLITS):
        (sources / split).mkdir(parents=True)
        wavs = {}
        for j in range(3 - k):  # 3 files in development, 2 in validation
            wav = sources / split / f"{split}_{j} sound.wav"
            write_wav(wav, seed=10 * k + j)
            wavs[wav.name] = wav
        pack(folder / f"clotho_audio_{split}.7z", {f"{split}/{n}": p for n, p in wavs.items()})
        write_csvs(folder, split, list(wavs))
        originals[split] = wavs
    return Server(folder, originals)


def fetch(server: Server, root: Path, downloader=None, **kwargs) -> Path:
    kwargs.setdefault("retries", 0)
    return download_clotho(
        root, SPLITS, files=server.files, base_url=URL, downloader=downloader or server.download, progress=False,
        **kwargs,
    )


def refuse(url, output_file, pooch_obj):
    raise AssertionError(f"the downloader must not be called (asked for {url})")


def offline(url, output_file, pooch_obj):
    raise requests.exceptions.ConnectionError(f"Failed to resolve host for {url}")


def leftovers(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.name.startswith((".extract-", ".stale-")))


def test_constants_describe_the_zenodo_record():
    assert CLOTHO_SPLITS == ("development", "validation", "evaluation")
    assert len(CLOTHO_FILES) == 9 and all(len(v) == 32 for v in CLOTHO_FILES.values())
    for split in CLOTHO_SPLITS:
        for name in (f"clotho_audio_{split}.7z", f"clotho_captions_{split}.csv", f"clotho_metadata_{split}.csv"):
            assert name in CLOTHO_FILES
    assert CLOTHO_URL.format(file="x.csv") == "https://zenodo.org/record/4783391/files/x.csv?download=1"


def test_fresh_download_produces_the_target_layout(server, tmp_path):
    root = tmp_path / "clotho"
    assert fetch(server, root) == root
    assert sorted(server.calls) == sorted(server.files)
    for split in SPLITS:
        got = {p.name for p in (root / split).iterdir()}
        assert got == set(server.originals[split]) | {".complete"}
        for name, original in server.originals[split].items():
            assert (root / split / name).read_bytes() == original.read_bytes()
        marker = json.loads((root / split / ".complete").read_text())
        assert marker["md5"] == server.files[f"clotho_audio_{split}.7z"]
        assert marker["files"] == len(server.originals[split])
        for kind in ("captions", "metadata"):
            name = f"clotho_{kind}_{split}.csv"
            assert md5(root / name) == server.files[name]
        assert md5(root / "archives" / f"clotho_audio_{split}.7z") == server.files[f"clotho_audio_{split}.7z"]
    assert not (root / "evaluation").exists()
    assert leftovers(root) == []
    assert pd.read_csv(root / "clotho_captions_validation.csv").shape == (2, 6)


def test_second_call_needs_no_network(server, tmp_path):
    root = tmp_path / "clotho"
    fetch(server, root)
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*")}
    fetch(server, root, downloader=refuse)
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*")} == before  # no re-extraction either


def test_keep_archives_false_deletes_them_and_rerun_stays_offline(server, tmp_path):
    root = tmp_path / "clotho"
    fetch(server, root, keep_archives=False)
    assert not (root / "archives").exists()
    fetch(server, root, downloader=refuse)
    assert clotho_status(root, SPLITS)["development"]["complete"]


def test_only_the_missing_pieces_are_fetched(server, tmp_path):
    root = tmp_path / "clotho"
    fetch(server, root)
    (root / "clotho_metadata_validation.csv").unlink()
    (root / "development" / "development_0 sound.wav").unlink()
    (root / "archives" / "clotho_audio_development.7z").unlink()
    server.calls.clear()
    fetch(server, root)
    assert sorted(server.calls) == ["clotho_audio_development.7z", "clotho_metadata_validation.csv"]
    assert (root / "development" / "development_0 sound.wav").is_file()
    assert leftovers(root) == []


def test_md5_mismatch_raises_download_error_and_leaves_no_split(server, tmp_path):
    root = tmp_path / "clotho"
    files = dict(server.files, **{"clotho_audio_validation.7z": "0" * 32})
    with pytest.raises(DownloadError) as info:
        download_clotho(root, SPLITS, files=files, base_url=URL, downloader=server.download, progress=False,
                        retries=0)
    message = str(info.value)
    assert "clotho_audio_validation.7z" in message
    assert "clotho_audio_development.7z" not in message
    assert isinstance(info.value.__cause__, ValueError)  # pooch's hash check, chained
    assert not (root / "validation").exists()
    assert not (root / "archives" / "clotho_audio_validation.7z").exists()
    assert (root / "development" / ".complete").is_file()  # the good split still got installed
    assert leftovers(root) == []


def test_offline_message_then_manual_placement(server, tmp_path):
    root = tmp_path / "clotho"
    with pytest.raises(DownloadError) as info:
        fetch(server, root, downloader=offline)
    message = str(info.value)
    assert isinstance(info.value.__cause__, requests.exceptions.ConnectionError)
    for name in server.files:
        assert name in message
        assert URL.format(file=name) in message
        where = root / "archives" / name if name.endswith(".7z") else root / name
        assert str(where) in message
    assert "rerun" in message
    assert not any((root / s).exists() for s in SPLITS)

    (root / "archives").mkdir(exist_ok=True)
    for name in server.files:
        where = root / "archives" / name if name.endswith(".7z") else root / name
        shutil.copyfile(server.folder / name, where)
    fetch(server, root, downloader=refuse)
    assert all(clotho_status(root, SPLITS)[s]["complete"] for s in SPLITS)


def test_transient_errors_are_retried(server, tmp_path, monkeypatch):
    monkeypatch.setattr(clotho, "_RETRY_WAIT_S", 0.0)
    failed = set()

    def flaky(url, output_file, pooch_obj):
        if url not in failed:
            failed.add(url)
            raise requests.exceptions.ConnectionError("connection reset by peer")
        server.download(url, output_file, pooch_obj)

    fetch(server, tmp_path / "clotho", downloader=flaky, retries=1)
    assert sorted(server.calls) == sorted(server.files)


def placeholder(name: str) -> str:
    return "q" * (len(name) - 4) + ".wav"


def rename_member(archive: Path, old: str, new: str) -> None:
    """Rewrite a member name inside an archive with a plain header; the 7z format stores names as UTF-16LE.

    py7zr refuses to write hostile names, so the fixture writes a harmless name of the same length, swaps
    the bytes and recomputes the two header CRCs of the 32-byte signature header.
    """
    data = bytearray(archive.read_bytes())
    src, dst = old.encode("utf-16-le"), new.encode("utf-16-le")
    at = data.find(src)
    assert at > 0 and len(src) == len(dst)
    data[at:at + len(src)] = dst
    offset, size = struct.unpack("<QQ", data[12:28])
    data[28:32] = struct.pack("<I", zlib.crc32(bytes(data[32 + offset:32 + offset + size])))
    data[8:12] = struct.pack("<I", zlib.crc32(bytes(data[12:32])))
    archive.write_bytes(bytes(data))


def hostile_archive(path: Path, good: Path, evil_name: str) -> Path:
    with py7zr.SevenZipFile(path, "w") as sz:
        sz.set_encoded_header_mode(False)
        sz.write(good, "validation/good.wav")
        sz.write(good, placeholder(evil_name))
    rename_member(path, placeholder(evil_name), evil_name)
    with py7zr.SevenZipFile(path) as sz:
        assert evil_name in sz.getnames()
    return path


@pytest.mark.parametrize("evil", ["../evil.wav", "/abs/evil.wav", "validation/../../evil.wav", "C:evil.wav"])
def test_hostile_member_names_are_refused(server, tmp_path, evil):
    good = next(iter(server.originals["validation"].values()))
    archive = hostile_archive(server.folder / "clotho_audio_validation.7z", good, evil)
    server.files["clotho_audio_validation.7z"] = md5(archive)
    target = tmp_path / "data" / "clotho"
    with pytest.raises(DataError) as info:
        fetch(server, target)
    assert evil in str(info.value) and "clotho_audio_validation.7z" in str(info.value)
    assert not (target / "validation").exists()
    assert leftovers(target) == []
    assert not list(tmp_path.rglob("evil.wav"))
    assert not Path("/abs/evil.wav").exists()


def test_extract_7z_safely_refuses_symlinks_and_extracts_nothing(tmp_path):
    good = tmp_path / "good.wav"
    write_wav(good, seed=1)
    link = tmp_path / "link.wav"
    os.symlink("/etc/passwd", link)
    archive = tmp_path / "links.7z"
    pack(archive, {"dev/good.wav": good, "dev/link.wav": link})
    dest = tmp_path / "out"
    with pytest.raises(DataError, match="dev/link.wav"):
        extract_7z_safely(archive, dest)
    assert not dest.exists()


def test_extract_7z_safely_returns_member_names(tmp_path):
    good = tmp_path / "good.wav"
    write_wav(good, seed=2)
    archive = tmp_path / "ok.7z"
    pack(archive, {"dev/a.wav": good, "dev/b.wav": good})
    assert sorted(extract_7z_safely(archive, tmp_path / "out")) == ["dev/a.wav", "dev/b.wav"]
    assert (tmp_path / "out" / "dev" / "b.wav").read_bytes() == good.read_bytes()
    truncated = tmp_path / "bad.7z"
    truncated.write_bytes(archive.read_bytes()[:-40])
    with pytest.raises(DataError, match="bad.7z"):
        extract_7z_safely(truncated, tmp_path / "out2")


def test_truncated_archive_with_matching_md5(server, tmp_path):
    archive = server.folder / "clotho_audio_development.7z"
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    server.files["clotho_audio_development.7z"] = md5(archive)  # pooch accepts it; extraction must not
    root = tmp_path / "clotho"
    with pytest.raises(DownloadError, match="clotho_audio_development.7z") as info:
        fetch(server, root)
    assert isinstance(info.value.__cause__, py7zr.exceptions.ArchiveError)
    assert "cannot be unpacked" in str(info.value)
    assert not (root / "development").exists()
    assert leftovers(root) == []
    assert (root / "validation" / ".complete").is_file()


def test_archive_without_split_prefix_still_lands_in_split_folder(server, tmp_path):
    wavs = server.originals["validation"]
    archive = server.folder / "clotho_audio_validation.7z"
    pack(archive, dict(wavs.items()))  # members at the top level
    server.files["clotho_audio_validation.7z"] = md5(archive)
    root = tmp_path / "clotho"
    fetch(server, root)
    assert {p.name for p in (root / "validation").glob("*.wav")} == set(wavs)


def test_incomplete_split_folder_is_replaced(server, tmp_path):
    root = tmp_path / "clotho"
    (root / "development").mkdir(parents=True)
    (root / "development" / "half.wav").write_bytes(b"partial")
    fetch(server, root)
    assert {p.name for p in (root / "development").glob("*.wav")} == set(server.originals["development"])
    assert leftovers(root) == []


def test_clotho_status(server, tmp_path):
    root = tmp_path / "clotho"
    status = clotho_status(root)
    assert set(status) == set(CLOTHO_SPLITS)
    assert status["development"] == {
        "complete": False, "wav_files": 0, "archive_present": False,
        "missing": ["development/ (audio)", "clotho_captions_development.csv", "clotho_metadata_development.csv"],
    }
    fetch(server, root)
    status = clotho_status(root)
    assert status["development"]["complete"] and status["development"]["wav_files"] == 3
    assert status["validation"] == {"complete": True, "wav_files": 2, "archive_present": True, "missing": []}
    assert not status["evaluation"]["complete"]
    (root / "clotho_captions_validation.csv").unlink()
    (root / "validation" / "validation_1 sound.wav").unlink()
    status = clotho_status(root, ["validation"])
    assert status["validation"]["complete"] is False
    assert status["validation"]["wav_files"] == 1
    assert status["validation"]["missing"] == ["validation/ (audio)", "clotho_captions_validation.csv"]


def test_leftovers_of_a_killed_run_are_cleaned(server, tmp_path):
    root = tmp_path / "clotho"
    (root / ".extract-development-abc123" / "development").mkdir(parents=True)
    (root / ".extract-development-abc123" / "development" / "x.wav").write_bytes(b"half")
    fetch(server, root)
    assert leftovers(root) == []


def test_default_downloader_is_pooch_http_with_progress_and_retries(server, tmp_path, monkeypatch):
    made = []

    class FakeHTTP:  # stands in for pooch.HTTPDownloader so no socket is opened
        def __init__(self, progressbar=False, **kwargs):
            made.append(progressbar)
            self.failures = 1

        def __call__(self, url, output_file, pooch_obj):
            if self.failures:
                self.failures -= 1
                raise requests.exceptions.Timeout("read timed out")
            server.download(url, output_file, pooch_obj)

    monkeypatch.setattr(clotho.pooch, "HTTPDownloader", FakeHTTP)
    monkeypatch.setattr(clotho, "_RETRY_WAIT_S", 0.0)
    download_clotho(tmp_path / "clotho", ["validation"], files=server.files, base_url=URL, retries=1)
    assert made == [True]
    assert sorted(server.calls) == sorted(n for n in server.files if "validation" in n)


def test_damaged_split_is_reextracted_from_the_kept_archive_offline(server, tmp_path):
    root = tmp_path / "clotho"
    fetch(server, root)
    (root / "validation" / "validation_0 sound.wav").unlink()
    assert not clotho_status(root, ["validation"])["validation"]["complete"]
    fetch(server, root, downloader=refuse)
    got = root / "validation" / "validation_0 sound.wav"
    assert got.read_bytes() == server.originals["validation"]["validation_0 sound.wav"].read_bytes()


def test_negative_retries_still_try_once(server, tmp_path):
    calls = []

    def counted(url, output_file, pooch_obj):
        calls.append(url)
        offline(url, output_file, pooch_obj)

    with pytest.raises(DownloadError) as info:
        fetch(server, tmp_path / "clotho", downloader=counted, retries=-1)
    assert len(calls) == len(server.files)
    assert isinstance(info.value.__cause__, requests.exceptions.ConnectionError)
