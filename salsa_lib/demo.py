"""The query demo: a thin ipywidgets layer over ``salsa_lib.retrieval`` (notebook 05).

Type a sentence, get the top-k sounds: for each, the moment that matches (its span, e.g.
``03:20–03:30``) plays, the whole file is a click away, a small spectrogram marks the span, and the
score reads as "better than 97 % of the collection's windows". When the query is one of the
collection's captions, the clip it was written for is marked ✓ and the others ✗. Headless
(papermill) the same ``QueryDemo.query`` runs the example queries and returns tables.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf

from salsa_lib import data_sources, retrieval, runs, sounds
from salsa_lib.checkpoints import load_member
from salsa_lib.errors import ConfigError
from salsa_lib.plots import plot_log_mel
from salsa_lib.splits import CAPTION_COLUMNS, preprocess_caption, read_captions_csv


def available_models(profile: str) -> dict[str, Path]:
    """Best checkpoints of the profile's trained models, stage 2 first (the demo's default)."""
    entries = sorted(runs.trained_models(profile), key=lambda entry: -entry["stage"])
    return {f"stage {e['stage']}: {e['model']}": Path(e["checkpoint"]) for e in entries}


def caption_owners(root: Path, split: str) -> dict[str, str]:
    """Caption text (as typed, case and punctuation ignored) -> the file it was written for."""
    frame = read_captions_csv(Path(root) / f"clotho_captions_{split}.csv")
    return {preprocess_caption(row[column]): row["file_name"] for _, row in frame.iterrows() for column in CAPTION_COLUMNS}


class QueryDemo:
    """Holds the loaded models and indexed collections; ``query`` is the whole search path."""

    def __init__(self, models: dict[str, Path], collections: dict[str, tuple[Path, dict[str, str]]], top_k: int = 5):
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
            self._indexes[key] = retrieval.build_index(self.collections[collection][0], model, model_id, progress=False)
        return self._indexes[key]

    def query(self, text: str, model_name: str, collection: str) -> tuple[pd.DataFrame, list[str]]:
        """Ranked results as a table (rank, file, span, score, how it compares, ✓/✗ for a known caption) and notes."""
        model, model_id = self._model(model_name)
        index = self._index(model_name, collection)
        if model_id != index.model_id:
            raise ConfigError(f"index of model {index.model_id!r} used with {model_id!r}")
        vector, notes = retrieval.embed_query(model, text)
        response = index.search_embedding(vector, self.top_k)
        root, owners = self.collections[collection]
        owner = owners.get(preprocess_caption(text))
        rows = [{"rank": r.rank, "file": r.path, "span": r.span, "start": r.start, "end": r.end,
                 "score": round(float(r.score), 4), "standing": standing(index, vector, r.score),
                 "associated": "" if owner is None else ("✓" if Path(r.path).name == owner else "✗"),
                 "path": str(index.root / r.path)}
                for r in response]
        return pd.DataFrame(rows), notes + list(response.notes)


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


def default_collections(profile: str, audio_dir: str = "") -> dict[str, tuple[Path, dict[str, str]]]:
    """The test split of the profile's data set, and optionally any folder."""
    data = data_sources.load_data_config(profile)
    root = data_sources.locate(data).root
    collections = {"test split": (root / data_sources.SPLITS["test"], caption_owners(root, data_sources.SPLITS["test"]))}
    if audio_dir:
        collections[f"folder: {audio_dir}"] = (Path(audio_dir).expanduser().resolve(), {})
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
