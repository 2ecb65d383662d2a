"""Text-to-audio search over a folder of sound files, down to the moment that matches.

    model, config, model_id = load_search_model("results/tiny/stage1/member0/checkpoints/best.ckpt")
    # or the authors' released model: load_search_model("data/checkpoints/passt_roberta.ckpt")
    index = build_index("my_sounds/", model, model_id)        # embeds new/changed files only
    response = search(index, model, model_id, "a dog barks")  # a list of SearchResult, plus .notes
    for r in response: print(r.rank, round(r.score, 3), index.root / r.path, r.span)

**Files.** Every file below the folder is probed by content (``salsa_lib.search.sounds``); what the
installed decoders cannot read is listed in ``index.skipped`` with its reason, other files are
counted in ``index.non_audio``.

**Windows.** Each file is streamed at 32 kHz mono and cut into the model's windows (its PaSST
input, e.g. 10 s) every ``hop_seconds`` (default half a window: an event up to half a window long
lies whole inside some window, at twice the windows of no overlap; a smaller hop costs more and
adds little). Each window is embedded as the model embeds a one-window clip (a padded last window
is masked as in training). A file scores as its best window, and the result names that window's
span. Memory stays a few windows per file, whatever its length.

**Cache and lock**: ``salsa_lib.search.index_cache``. **Index and backends**: ``salsa_lib.search.vector_index``.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from salsa_lib.core.captions import preprocess_caption
from salsa_lib.core import released
from salsa_lib.core.checkpoints import load_member
from salsa_lib.data.audio import SAMPLE_RATE
from salsa_lib.errors import ConfigError, DataError
from salsa_lib.files import file_digest
from salsa_lib.search import sounds
from salsa_lib.search.index_cache import CACHE_FORMAT, FileEntry, folder_lock, read_cache, write_cache
from salsa_lib.search.vector_index import (BACKENDS, FAISS_THRESHOLD, AudioIndex, SearchResponse, SearchResult,  # noqa: F401
                                           format_time)

LOCK_TIMEOUT = 3600.0  # seconds to wait for another process indexing the same folder


def model_id_of(checkpoint) -> str:
    """The first 16 hex digits of the checkpoint's sha256."""
    return file_digest(Path(checkpoint))[:16]


def load_search_model(checkpoint, device: str = "cpu", *, text_encoder: str = "", trust_pickle: bool = False):
    """(model, Stage1Config, model_id) for a stage-1 or stage-2 checkpoint of this project or the authors'
    released ``passt_roberta.ckpt``, told apart by content (the names its weights carry), not by file name.

    For the released checkpoint only: ``text_encoder`` a local folder holding roberta-large's
    configuration and tokenizer (instead of the Hugging Face cache), ``trust_pickle`` a full unpickling
    (trusted files only; the safe load reads the authors' file as it is).
    """
    if not Path(checkpoint).is_file():
        raise DataError(f"model file {checkpoint} does not exist: give a best.ckpt of stage 1 or 2 (results/<profile>/"
                        "stage1|stage2/<model>/checkpoints/) or the authors' passt_roberta.ckpt, downloaded as their "
                        f"README describes (the default place: {released.default_checkpoint_path()})")
    if released.is_released_checkpoint(checkpoint):
        config = released.RELEASED_CONFIG  # looked up now, so a test can stand a tiny architecture in
        config = config.replace(text_encoder=text_encoder) if text_encoder else config
        model = released.load_released_checkpoint(checkpoint, config, trust_pickle=trust_pickle)
    elif text_encoder:
        raise ConfigError(f"a text encoder folder ({text_encoder}) is taken for the released checkpoint only; "
                          f"{checkpoint} is not the released checkpoint, and a checkpoint of this project "
                          "names its text encoder in its saved parameters")
    else:
        model, config = load_member(checkpoint)  # every way a file can be unfit is a DataError there
    return model.to(device), config, model_id_of(checkpoint)


@contextlib.contextmanager
def _eval_mode(model):
    training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(training)


class _WindowEmbedder:
    """Collects windows of many files into batches of ``batch_size`` for the model; results per file."""

    def __init__(self, model, batch_size: int):
        self.model, self.batch_size = model, batch_size
        self.device = next(model.parameters()).device
        self.pending, self.done = [], {}  # pending: (rel, start, wave, fraction); done: rel -> [vectors]

    def add(self, rel: str, start: int, wave: np.ndarray, fraction: float) -> None:
        self.pending.append((rel, start, wave, fraction))
        if len(self.pending) >= self.batch_size:
            self.flush()

    def discard(self, rel: str) -> None:
        self.pending = [p for p in self.pending if p[0] != rel]
        self.done.pop(rel, None)

    def flush(self) -> None:
        if not self.pending:
            return
        batch = torch.from_numpy(np.stack([p[2] for p in self.pending])).to(self.device)
        lengths = torch.tensor([p[3] for p in self.pending], dtype=torch.float32, device=self.device)
        vectors = self.model.embed_audio(batch, lengths).float().cpu().numpy()  # dependency noise: salsa_lib.quiet
        for (rel, start, _, _), vector in zip(self.pending, vectors):
            self.done.setdefault(rel, []).append((start, vector))
        self.pending = []


def _embed_files(model, todo, window: int, hop: int, batch_size: int, progress: bool):
    """Embed ``todo`` [(rel, path, size, mtime, seconds)] -> {rel: FileEntry}, {rel: reason}, [notes]."""
    embedder, failed, notes, lengths = _WindowEmbedder(model, batch_size), {}, [], {}
    bar = _progress_bar(todo, progress)
    for count, (rel, path, size, mtime, seconds) in enumerate(todo, start=1):
        samples = 0
        try:
            for start, wave, fraction in sounds.stream_windows(path, window, hop):
                embedder.add(rel, start, wave, fraction)
                samples = start + round(fraction * window)
        except DataError as err:
            embedder.discard(rel)
            failed[rel] = getattr(err, "reason", str(err))
        else:
            if _stamp(path) != (size, mtime):  # rewritten while read: the windows may mix two versions
                embedder.discard(rel)
                notes.append(f"{rel} changed while it was being indexed; left out this time, indexed on the next run")
            else:
                lengths[rel] = samples
        bar.update(min(round(seconds / 3600, 4), bar.total - bar.n))
        bar.set_postfix_str(f"{count}/{len(todo)} files", refresh=False)
    embedder.flush()
    bar.close()
    return {rel: _entry(embedder.done[rel], size, mtime, lengths[rel], window)
            for rel, _, size, mtime, _ in todo if rel in lengths}, failed, notes


def _progress_bar(todo, progress: bool):
    """Hours of audio done and left, files done, elapsed and estimated time to go."""
    hours = sum(t[4] for t in todo) / 3600
    return tqdm(total=round(hours, 4), unit="h audio", desc="indexing", disable=not progress or not todo,
                bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.2f}/{total:.2f} h audio [{elapsed}<{remaining}{postfix}]")


def _entry(windows, size: int, mtime: int, samples: int, window: int) -> FileEntry:
    """A file's cache entry from its (start sample, embedding) pairs; the last window ends with the audio."""
    starts = np.array([start for start, _ in windows], dtype=np.float64)
    return FileEntry(size, mtime, samples / SAMPLE_RATE, np.stack([v for _, v in windows]).astype(np.float32),
                     starts / SAMPLE_RATE, np.minimum(starts + window, samples) / SAMPLE_RATE)


def _stamp(path: Path):
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_size, stat.st_mtime_ns


def _probe_all(files, cached: dict, cached_bad: dict):
    """Split the listing into reused entries, known failures, files to embed and newly found failures."""
    reused, reasons, todo, non_audio = {}, {}, [], []
    for rel, path, size, mtime in files:
        if rel in cached and (cached[rel].size, cached[rel].mtime) == (size, mtime):
            reused[rel] = cached[rel]
        elif rel in cached_bad and cached_bad[rel][:2] == (size, mtime):
            reasons[rel] = cached_bad[rel][2]
        else:
            info, reason, audio_like = sounds.probe(path)
            if info is not None:
                todo.append((rel, path, size, mtime, info.frames / info.samplerate))
            elif audio_like:
                reasons[rel] = reason
            else:
                non_audio.append(rel)
    return reused, reasons, todo, non_audio


def build_index(audio_dir, model, model_id: str, *, cache_path=None, hop_seconds: float | None = None,
                batch_size: int = 16, progress: bool = True, rebuild: bool = False, backend: str = "auto",
                lock_timeout: float = LOCK_TIMEOUT) -> AudioIndex:
    """Index every decodable sound below ``audio_dir`` (recursive, by content) in model windows.

    ``hop_seconds``: window hop (default half the model's window). ``batch_size``: windows per forward
    pass. ``rebuild``: ignore the cache. A folder without decodable audio raises DataError.
    """
    root = Path(audio_dir).expanduser()
    if not root.is_dir():
        raise DataError(f"audio folder {root} does not exist or is not a folder")
    window = model.audio_encoder.window_samples
    hop = int(round(hop_seconds * SAMPLE_RATE)) if hop_seconds is not None else window // 2
    if not 0 < hop <= window or batch_size < 1:
        raise ConfigError(f"need 0 < hop_seconds <= the model's window ({window / SAMPLE_RATE:g} s) and "
                          f"batch_size >= 1; got {hop_seconds}, {batch_size}")
    policy = {"sample_rate": SAMPLE_RATE, "window_seconds": window / SAMPLE_RATE, "hop_seconds": hop / SAMPLE_RATE,
              "rule": "stream at 32 kHz mono (soxr HQ); a window every hop; each embedded as a one-window clip; "
                      "a file scores as its best window"}
    meta = {"format": CACHE_FORMAT, "model_id": model_id, "policy": policy, "dim": int(model.project_audio.out_features)}
    cache_path = Path(cache_path) if cache_path else root / ".salsa_index" / f"{model_id}.npz"
    notes = []
    with folder_lock(cache_path, lock_timeout, notes):
        listing = sounds.list_files(root)
        if not listing.files and not listing.problems:
            raise DataError(f"no audio files in {root}: it holds no files (hidden files and folders are not searched)")
        cached, cached_bad, note = ({}, {}, None) if rebuild else read_cache(cache_path, meta)
        notes += [note] if note else []
        reused, reasons, todo, non_audio = _probe_all(listing.files, cached, cached_bad)
        with _eval_mode(model):
            embedded, failed, changed = _embed_files(model, todo, window, hop, batch_size, progress)
        notes += changed
        reasons.update(failed)
        entries = {rel: reused.get(rel) or embedded[rel] for rel, *_ in listing.files if rel in reused or rel in embedded}
        stamps = {rel: (size, mtime) for rel, _, size, mtime in listing.files}
        bad = [(rel, *stamps[rel], reasons[rel]) for rel in sorted(reasons)]
        removed = (set(cached) | set(cached_bad)) - set(stamps)
        stats = {"reused": len(reused), "embedded": len(embedded), "removed": len(removed)}
        if todo or note or rebuild or stats["removed"] or not cache_path.exists():
            try:
                write_cache(cache_path, meta, entries, bad)
            except OSError as err:
                notes.append(f"could not write the embedding cache {cache_path} ({err}); searching without it")
    skipped = sorted(listing.problems + [(rel, why) for rel, *_, why in bad])
    if not entries:
        listing_text = "; ".join(f"{rel} ({reason})" for rel, reason in skipped[:5]) or "only non-audio files"
        raise DataError(f"none of the {len(listing.files) + len(listing.problems)} files in {root} is decodable "
                        f"audio: {listing_text}")
    return _assemble(root, model_id, entries, skipped, listing.non_audio + non_audio, notes, policy, stats,
                     cache_path, backend)


def _assemble(root, model_id, entries: dict, skipped, non_audio, notes, policy, stats, cache_path, backend):
    rels = list(entries)
    counts = [len(entries[r].starts) for r in rels]
    index = AudioIndex(root, model_id, rels, np.concatenate([entries[r].embeddings for r in rels]),
                       np.repeat(np.arange(len(rels)), counts), np.concatenate([entries[r].starts for r in rels]),
                       np.concatenate([entries[r].ends for r in rels]),
                       np.array([entries[r].duration for r in rels]), skipped, sorted(non_audio), notes, policy,
                       stats, cache_path, backend)
    if non_audio:
        index.notes.append(f"{len(non_audio)} file(s) are not audio and were left out (e.g. {sorted(non_audio)[0]})")
    return index


def check_query(query: str) -> str:
    """The query as the text encoder sees it (lowercase, no punctuation); ConfigError if that is empty."""
    if not isinstance(query, str) or not query.strip():
        raise ConfigError(f"empty query {query!r}: describe the sound you are looking for, e.g. 'a dog barks'")
    text = preprocess_caption(query)
    if not text:
        raise ConfigError(f"empty query {query!r}: nothing is left once punctuation is removed")
    return text


def embed_query(model, query: str) -> tuple[np.ndarray, list[str]]:
    """The query's unit embedding (D,) and notes (cut-off query, unknown characters)."""
    text, notes, encoder = check_query(query), [], model.text_encoder
    ids = encoder.tokenizer(text)["input_ids"]
    if len(ids) > encoder.max_length:
        notes.append(f"the query has {len(ids)} tokens; the model reads only the first {encoder.max_length} "
                     "(the rest was ignored)")
    if encoder.tokenizer.unk_token_id is not None and encoder.tokenizer.unk_token_id in ids:
        notes.append("parts of the query (e.g. emoji or rare scripts) are unknown to the text encoder "
                     "and were read as [UNK]")
    with _eval_mode(model):
        return model.embed_text([query])[0].float().cpu().numpy(), notes


def search(index: AudioIndex, model, model_id: str, query: str, top_k: int = 5, backend: str | None = None,
           per_file: bool = True) -> SearchResponse:
    """The ``top_k`` files (best window each; ``per_file=False``: windows) matching ``query``, with notes."""
    if model_id != index.model_id:
        raise ConfigError(f"the index was built with model {index.model_id!r} but the search uses model "
                          f"{model_id!r}; rebuild the index with this model")
    vector, notes = embed_query(model, query)
    response = index.search_embedding(vector, top_k, backend, per_file)
    response.notes.extend(notes)
    return response
