"""The query demo: a thin ipywidgets layer over ``salsa_lib.search.retrieval`` (notebook 05).

Type a sentence, get the top-k sounds: for each, the moment that matches (its span, e.g.
``03:20–03:30``) plays, the whole file is a click away, a small spectrogram marks the span, and the
score reads as "better than 97 % of the collection's windows". When the query is one of the
collection's captions, the clip it was written for is marked ✓, and on the synthetic benchmark every
other clip the caption truly describes too; the rest ✗. Headless (papermill) the same
``QueryDemo.query`` runs the example queries, ``hit_rates`` counts how many of their results truly
match (beside chance), and ``example_players`` keeps a few players and spectrograms in the executed
notebook. The model menu (the profile's models and the authors' released one) is ``salsa_lib.search.menu``.
"""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf

from salsa_lib.core.captions import preprocess_caption
from salsa_lib.data import data_sources
from salsa_lib.data.splits import CAPTION_COLUMNS, read_captions_csv
from salsa_lib.errors import ConfigError
from salsa_lib.plots import plot_log_mel
from salsa_lib.search import retrieval, sounds
from salsa_lib.search.menu import (available_models, choose_model, describe_model, menu_text,  # noqa: F401
                                   model_scope)


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

    def relevant(self, query: str) -> frozenset[str] | None:
        """The file names ``query`` truly describes (its own clip where the truth is unknown); None for a
        query that is none of the collection's captions."""
        key = preprocess_caption(query)
        return self.matches.get(key, frozenset()) | {self.owners[key]} if key in self.owners else None


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
        if name not in self._loaded:  # any model file of the menu, the released one too
            model, _, model_id = retrieval.load_search_model(self.models[name])
            self._loaded[name] = (model, model_id)
        return self._loaded[name]

    def index(self, model_name: str, collection: str):
        """The collection's index for the model (built on first use, then reused)."""
        key = (model_name, collection)
        if key not in self._indexes:
            model, model_id = self._model(model_name)
            self._indexes[key] = retrieval.build_index(self.collections[collection].root, model, model_id, progress=False)
        return self._indexes[key]

    def query(self, text: str, model_name: str, collection: str) -> tuple[pd.DataFrame, list[str]]:
        """Ranked results as a table (rank, file, span, score, how it compares, ✓/✗ for a known caption) and notes.

        A span that covers the whole file (a clip no longer than one window) reads "whole clip"."""
        model, model_id = self._model(model_name)
        index = self.index(model_name, collection)
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
    """Every query's top-k results in one table (the notes each query got in its last column)."""
    tables = []
    for text in queries:
        table, notes = demo.query(text, model_name, collection)
        tables.append(table.drop(columns="path").assign(query=text, notes="; ".join(notes)))
    return pd.concat(tables, ignore_index=True)[["query", "rank", "file", "span", "score", "standing", "associated",
                                                 "notes"]]


def informative_columns(examples: pd.DataFrame, index) -> pd.DataFrame:
    """The examples without the columns that say nothing here: ``span`` when every result is a whole clip,
    ``standing`` when every file of the collection (``index``) is one window, so that it restates the
    rank, ``notes`` and ``associated`` when empty."""
    says_nothing = {"span": (examples["span"] == "whole clip").all(), "standing": index.windows == len(index),
                    "notes": (examples["notes"] == "").all(), "associated": (examples["associated"] == "").all()}
    return examples.drop(columns=[column for column, empty in says_nothing.items() if empty])


def hit_rates(examples: pd.DataFrame, collection: Collection, n_files: int) -> pd.DataFrame:
    """Per example query (and over all of them): of its top-k results, how many truly match, beside the
    rate k random files would reach (the share of the collection the query truly describes). Queries
    that are none of the collection's captions have no known truth and are left out."""
    rows = []
    for query, table in examples.groupby("query", sort=False):
        relevant = collection.relevant(query)
        if relevant is None:
            continue
        hits = int(sum(Path(f).name in relevant for f in table["file"]))
        rows.append({"query": query, "top k": len(table), "true matches": hits, "relevant files": len(relevant),
                     "hit rate %": round(100 * hits / len(table), 2),
                     "chance %": round(100 * len(relevant) / n_files, 2)})
    if not rows:
        return pd.DataFrame(columns=["query", "top k", "true matches", "relevant files", "hit rate %", "chance %"])
    frame = pd.DataFrame(rows)
    total = {"query": "all queries", "top k": frame["top k"].sum(), "true matches": frame["true matches"].sum(),
             "relevant files": frame["relevant files"].sum(),
             "hit rate %": round(100 * frame["true matches"].sum() / frame["top k"].sum(), 2),
             "chance %": round(float((frame["relevant files"] / n_files).mean() * 100), 2)}
    return pd.concat([frame, pd.DataFrame([total])], ignore_index=True)


def _audio_data_uri(path, start: float, end: float) -> str:
    """The span as Ogg Vorbis (a tenth of WAV's size), for a player kept inside the executed notebook."""
    buffer = io.BytesIO()
    sf.write(buffer, sounds.read_span(Path(path), start, end), sounds.SAMPLE_RATE, format="OGG", subtype="VORBIS")
    return "data:audio/ogg;base64," + base64.b64encode(buffer.getvalue()).decode()


def example_players(demo: QueryDemo, queries: list[str], model_name: str, collection: str, players: int = 1) -> str:
    """The queries' results as HTML that an executed notebook keeps: each row's mark, file and span, and for
    the first ``players`` rows of each query a player of its span and its spectrogram (embedded, so
    listening needs no kernel; the others are a search away in the app, which keeps the notebook small)."""
    blocks = [f"<p>model: <b>{html.escape(model_name)}</b>; collection: {html.escape(collection)}</p>"]
    for text in queries:
        table, _ = demo.query(text, model_name, collection)
        lines = [f"<p><b>{html.escape(text)}</b></p><table>"]
        for row in table.itertuples():
            where = "" if row.span == "whole clip" else f"<br><small>{row.span}</small>"
            media = "<td></td><td></td>"
            if row.rank <= players:
                png = base64.b64encode(spectrogram_png(row.path, row.start, row.end)).decode()
                media = (f"<td><audio controls src='{_audio_data_uri(row.path, row.start, row.end)}'></audio></td>"
                         f"<td><img width='220' src='data:image/png;base64,{png}'></td>")
            lines.append(f"<tr class='salsa-example'><td>{row.rank}. {row.associated}</td>"
                         f"<td>{html.escape(row.file)}{where}</td>{media}</tr>")
        blocks.append("\n".join(lines) + "</table>")
    return "\n".join(blocks)
