"""The query demo: a thin ipywidgets layer over ``salsa_lib.search.retrieval`` (notebook 05).

Type a sentence, get the top-k sounds: for each, the moment that matches (its span, e.g.
``03:20–03:30``) plays, the whole file is a click away, a small spectrogram marks the span, and the
score reads as "better than 97 % of the collection's windows". When the query is one of the
collection's captions, the clip it was written for is marked ✓, and on the synthetic benchmark every
other clip the caption truly describes too; the rest ✗. Headless (papermill) the same
``QueryDemo.query`` runs the example queries, and ``example_players`` keeps their players and
spectrograms in the executed notebook.
"""

from __future__ import annotations

import base64
import html
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf

from salsa_lib import runs
from salsa_lib.core.captions import preprocess_caption
from salsa_lib.core.checkpoints import load_member
from salsa_lib.data import data_sources
from salsa_lib.data.splits import CAPTION_COLUMNS, read_captions_csv
from salsa_lib.errors import ConfigError
from salsa_lib.plots import plot_log_mel
from salsa_lib.search import retrieval, sounds


# stage-2 students of *estimated* correspondences: SALSA itself (truth and control are our yardsticks)
SALSA_TEACHERS = ("ensemble", "self")
TEACHERS_IN_WORDS = {"ensemble": "SALSA: distilled from the stage-1 ensemble's estimated correspondences",
                     "self": "SALSA: distilled from its own initial member's estimated correspondences",
                     "truth": "not SALSA: distilled from the synthetic set's known correspondences (a ceiling)",
                     "control": "not SALSA: the contrastive loss again, for as long (the control)"}


def _record(checkpoint: Path) -> dict:
    return json.loads((Path(checkpoint).parent.parent / runs.RECORD).read_text())


def available_models(profile: str) -> dict[str, Path]:
    """Best checkpoints of the profile's trained models, the demo's default first: SALSA students
    (stage 2 on estimated correspondences) by validation mAP@10, then the other stage-2 runs, then the
    stage-1 members (each group by validation mAP@10). Chosen by validation, never by test scores."""
    def order(entry: dict) -> tuple:
        record = _record(entry["checkpoint"])
        teachers = record["run"].get("teachers") if entry["stage"] == 2 else None
        group = 0 if teachers in SALSA_TEACHERS else 1 if entry["stage"] == 2 else 2
        return group, -record["val"]["mAP@10"], entry["model"]

    entries = sorted(runs.trained_models(profile), key=order)
    return {f"stage {e['stage']}: {e['model']}": Path(e["checkpoint"]) for e in entries}


def choose_model(models: dict[str, Path], name: str = "") -> str:
    """``name`` from the menu, or the default (the first) when empty; a clear error for anything else."""
    if not models:
        raise ConfigError("no trained model yet: run notebooks 01 (and 03) first")
    if name and name not in models:
        raise ConfigError(f"model={name!r} is not in the menu: {', '.join(models)}")
    return name or next(iter(models))


def describe_model(checkpoint: Path) -> str:
    """What a model of the menu is, in words, with the validation score it was chosen by."""
    record = _record(checkpoint)
    teachers = record["run"].get("teachers")
    what = (TEACHERS_IN_WORDS.get(teachers, f"stage 2 with {teachers} teachers") +
            f", started from member{record['run']['init_member']}" if teachers else
            "stage 1: the contrastive loss with i = j labels (a teacher, not SALSA's final model)")
    return f"{what}; validation mAP@10 {100 * record['val']['mAP@10']:.1f} % (best epoch {record['best_epoch']})"


@dataclass(frozen=True)
class Collection:
    """A folder to search, and what is known about its clips: for a query that is one of its captions,
    the file it was written for (``owners``) and every file it truly describes (``matches``, synthetic only)."""

    root: Path
    owners: dict[str, str] = field(default_factory=dict)
    matches: dict[str, frozenset[str]] = field(default_factory=dict)

    def mark(self, query: str, file: str) -> str:
        """✓ (the clip the caption was written for), ✓ true match (another clip it describes), ✗, or ''."""
        key = preprocess_caption(query)
        if key not in self.owners:
            return ""
        if Path(file).name == self.owners[key]:
            return "✓"
        return "✓ true match" if Path(file).name in self.matches.get(key, ()) else "✗"


def captioned_collection(root: Path, split: str, truth=None) -> Collection:
    """The split's folder with caption owners and, given the truth (clips x captions), every true match.

    Caption text is compared as typed with case and punctuation ignored; a text that several captions
    share truly matches the clips of any of them."""
    frame = read_captions_csv(Path(root) / f"clotho_captions_{split}.csv")
    owners, matches = {}, {}
    usable = truth is not None and truth.shape == (len(frame), len(CAPTION_COLUMNS) * len(frame))
    columns = truth.tocsc() if usable else None
    names = frame["file_name"].tolist()
    for i, row in enumerate(frame.itertuples(index=False)):
        for k, column in enumerate(CAPTION_COLUMNS):
            key = preprocess_caption(getattr(row, column))
            owners[key] = row.file_name
            if usable:
                clips = columns[:, len(CAPTION_COLUMNS) * i + k].nonzero()[0]
                matches[key] = matches.get(key, frozenset()) | {names[c] for c in clips}
    return Collection(Path(root) / split, owners, matches)


class QueryDemo:
    """Holds the loaded models and indexed collections; ``query`` is the whole search path."""

    def __init__(self, models: dict[str, Path], collections: dict[str, Collection], top_k: int = 5):
        self.models, self.collections, self.top_k = models, collections, top_k
        self._loaded, self._indexes = {}, {}

    def _model(self, name: str):
        if name not in self._loaded:
            model, _ = load_member(self.models[name])
            self._loaded[name] = (model, retrieval.model_id_of(self.models[name]))
        return self._loaded[name]

    def _index(self, model_name: str, collection: str):
        key = (model_name, collection)
        if key not in self._indexes:
            model, model_id = self._model(model_name)
            self._indexes[key] = retrieval.build_index(self.collections[collection].root, model, model_id, progress=False)
        return self._indexes[key]

    def query(self, text: str, model_name: str, collection: str) -> tuple[pd.DataFrame, list[str]]:
        """Ranked results as a table (rank, file, span, score, how it compares, ✓/✗ for a known caption) and notes.

        A span that covers the whole file (a clip no longer than one window) reads "whole clip"."""
        model, model_id = self._model(model_name)
        index = self._index(model_name, collection)
        if model_id != index.model_id:
            raise ConfigError(f"index of model {index.model_id!r} used with {model_id!r}")
        vector, notes = retrieval.embed_query(model, text)
        response = index.search_embedding(vector, self.top_k)
        known = self.collections[collection]
        durations = dict(zip(index.paths, index.durations)) if index.durations is not None else {}
        rows = [{"rank": r.rank, "file": r.path, "span": _span(r, durations.get(r.path)), "start": r.start,
                 "end": r.end, "score": round(float(r.score), 4), "standing": standing(index, vector, r.score),
                 "associated": known.mark(text, r.path), "path": str(index.root / r.path)}
                for r in response]
        return pd.DataFrame(rows), notes + list(response.notes)


def _span(result, duration: float | None) -> str:
    whole = duration is not None and result.start <= 0 and result.end >= duration - 1e-3
    return "whole clip" if whole else result.span


def standing(index, vector, score: float) -> str:
    """The score as a person reads it: the share of the collection's windows that score lower."""
    if index.embeddings is None:
        return f"cosine {score:.2f}"
    below = float(np.mean(index.embeddings @ np.asarray(vector, np.float32) < score - 1e-6))
    return f"better than {100 * below:.0f} % of {index.windows:,} moments"


def span_wav(path: str | Path, start: float, end: float) -> bytes:
    """The matching span as WAV bytes for the player (seeking, so a 2-hour file costs only the span)."""
    buffer = io.BytesIO()
    sf.write(buffer, sounds.read_span(Path(path), start, end), sounds.SAMPLE_RATE, format="WAV")
    return buffer.getvalue()


def spectrogram_png(path: str | Path, start: float = 0.0, end: float | None = None, width: float = 3.0) -> bytes:
    """A small log-mel picture around [start, end] with the span shaded, as PNG bytes for an ipywidgets Image."""
    import matplotlib  # lazy: the search path (no pictures) stays free of matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    end = start + 10.0 if end is None else end
    context = max(2.0, end - start)  # one span of context either side
    first = max(0.0, start - context)
    wave = sounds.read_span(Path(path), first, end + context)
    fig, ax = plt.subplots(figsize=(width, 1.2))
    plot_log_mel(ax, wave, sounds.SAMPLE_RATE)
    ax.axvspan(start - first, min(end, first + len(wave) / sounds.SAMPLE_RATE) - first, color="cyan", alpha=0.25,
               lw=0)
    ax.set_axis_off()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80, bbox_inches="tight", pad_inches=0)
    plt.close(fig)
    return buffer.getvalue()


def build_app(demo: QueryDemo):
    """The widget: text box (Enter or button), model and collection choice, result rows with players."""
    import ipywidgets as w  # lazy: only the interactive app needs it, not the headless example queries

    query = w.Text(placeholder="describe a sound, e.g. a siren wails while rain falls", layout=w.Layout(width="60%"))
    button = w.Button(description="Search", button_style="primary")
    model = w.Dropdown(options=list(demo.models), description="model")
    collection = w.Dropdown(options=list(demo.collections), description="collection")
    results = w.VBox()

    def run(_=None):
        results.children = [w.HTML("<i>searching…</i>")]
        try:
            table, notes = demo.query(query.value, model.value, collection.value)
        except Exception as err:  # shown in the app, never a dead widget
            results.children = [w.HTML(f"<b>error:</b> {err}")]
            return
        rows = [w.HTML("<br>".join(f"<i>note: {n}</i>" for n in notes))] if notes else []
        for row in table.itertuples():
            rows.append(_result_row(w, row))
        results.children = rows

    query.on_submit(run)
    button.on_click(run)
    return w.VBox([w.HBox([query, button]), w.HBox([model, collection]), results])


def _result_row(w, row):
    """Label (rank, ✓/✗, file, span, standing), the span's player, a whole-file button, the spectrogram."""
    label = w.HTML(f"<b>{row.rank}.</b> {row.associated} {row.file} <span class='salsa-span'>{row.span}</span><br>"
                   f"<small>{row.standing} (cosine {row.score:.3f})</small>", layout=w.Layout(width="40%"))
    audio = w.Audio(value=span_wav(row.path, row.start, row.end), format="wav", autoplay=False, loop=False)
    whole = w.Button(description="whole file", tooltip=f"play all of {row.file}", layout=w.Layout(width="90px"))

    def play_whole(_=None):
        audio.format = Path(row.path).suffix.lstrip(".").lower() or "wav"
        audio.value = Path(row.path).read_bytes()
        whole.disabled = True

    whole.on_click(play_whole)
    picture = w.Image(value=spectrogram_png(row.path, row.start, row.end), format="png", layout=w.Layout(width="220px"))
    return w.HBox([label, w.VBox([audio, whole]), picture], _dom_classes=["salsa-result"])


def default_collections(profile: str, audio_dir: str = "") -> dict[str, Collection]:
    """The test split of the profile's data set (with its true matches where known), and optionally any folder."""
    data = data_sources.load_data_config(profile)
    root = data_sources.locate(data).root
    split = data_sources.SPLITS["test"]
    collections = {"test split": captioned_collection(root, split, data_sources.load_truth(data, "test"))}
    if audio_dir:
        collections[f"folder: {audio_dir}"] = Collection(Path(audio_dir).expanduser().resolve())
    return collections


def example_queries(profile: str, n: int, given: str = "") -> list[str]:
    """Given queries (';'-separated) or the first caption of the first n test clips."""
    if given:
        return [q.strip() for q in given.split(";") if q.strip()]
    data = data_sources.load_data_config(profile)
    root = data_sources.locate(data).root
    frame = read_captions_csv(root / f"clotho_captions_{data_sources.SPLITS['test']}.csv")
    return list(frame["caption_1"].head(n))


def run_examples(demo: QueryDemo, queries: list[str], model_name: str, collection: str) -> pd.DataFrame:
    tables = []
    for text in queries:
        table, notes = demo.query(text, model_name, collection)
        tables.append(table.drop(columns="path").assign(query=text, notes="; ".join(notes)))
    return pd.concat(tables, ignore_index=True)[["query", "rank", "file", "span", "score", "standing", "associated",
                                                 "notes"]]


def example_players(demo: QueryDemo, queries: list[str], model_name: str, collection: str) -> str:
    """The queries' results as HTML that an executed notebook keeps: each row's mark, file, span and
    standing, a player of its span and its spectrogram (embedded, so listening needs no kernel)."""
    blocks = [f"<p>model: <b>{html.escape(model_name)}</b>; collection: {html.escape(collection)}</p>"]
    for text in queries:
        table, _ = demo.query(text, model_name, collection)
        lines = [f"<p><b>{html.escape(text)}</b></p><table>"]
        for row in table.itertuples():
            wav = base64.b64encode(span_wav(row.path, row.start, row.end)).decode()
            png = base64.b64encode(spectrogram_png(row.path, row.start, row.end)).decode()
            lines.append(f"<tr class='salsa-example'><td>{row.rank}. {row.associated}</td><td>{html.escape(row.file)}"
                         f"<br><small>{row.span}; {row.standing}</small></td>"
                         f"<td><audio controls src='data:audio/wav;base64,{wav}'></audio></td>"
                         f"<td><img width='220' src='data:image/png;base64,{png}'></td></tr>")
        blocks.append("\n".join(lines) + "</table>")
    return "\n".join(blocks)
