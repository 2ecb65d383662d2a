"""The query demo: a thin ipywidgets layer over ``salsa_lib.retrieval`` (notebook 05).

Type a sentence, get the top-k sounds with players, scores and small spectrograms. When the query
is one of the collection's captions, the clip it was written for is marked ✓ and the others ✗.
Headless (papermill) the same ``QueryDemo.query`` runs the example queries and returns tables.
"""

from __future__ import annotations

import io
from pathlib import Path

import pandas as pd

from salsa_lib import datasets, retrieval, stage1


def available_models(profile: str) -> dict[str, Path]:
    """Best checkpoints of the profile's trained models, stage 2 first (the demo's default)."""
    from salsa_lib.evaluation import models_to_evaluate

    entries = sorted(models_to_evaluate(profile), key=lambda entry: -entry["stage"])
    return {f"stage {e['stage']}: {e['model']}": Path(e["checkpoint"]) for e in entries}


def caption_owners(root: Path, split: str) -> dict[str, str]:
    """Caption text (as typed, case and punctuation ignored) -> the file it was written for."""
    from salsa_lib.data import preprocess_caption, read_captions_csv

    frame = read_captions_csv(Path(root) / f"clotho_captions_{split}.csv")
    return {preprocess_caption(row[f"caption_{k}"]): row["file_name"] for _, row in frame.iterrows() for k in range(1, 6)}


class QueryDemo:
    """Holds the loaded models and indexed collections; ``query`` is the whole search path."""

    def __init__(self, models: dict[str, Path], collections: dict[str, tuple[Path, dict[str, str]]], top_k: int = 5):
        self.models, self.collections, self.top_k = models, collections, top_k
        self._loaded, self._indexes = {}, {}

    def _model(self, name: str):
        if name not in self._loaded:
            model, _ = stage1.load_member(self.models[name])
            self._loaded[name] = (model, retrieval.model_id_of(self.models[name]))
        return self._loaded[name]

    def _index(self, model_name: str, collection: str):
        key = (model_name, collection)
        if key not in self._indexes:
            model, model_id = self._model(model_name)
            self._indexes[key] = retrieval.build_index(self.collections[collection][0], model, model_id, progress=False)
        return self._indexes[key]

    def query(self, text: str, model_name: str, collection: str) -> tuple[pd.DataFrame, list[str]]:
        """Ranked results as a table (rank, file, score, ✓/✗ when the query is a known caption) and notes."""
        from salsa_lib.data import preprocess_caption

        model, model_id = self._model(model_name)
        index = self._index(model_name, collection)
        response = retrieval.search(index, model, model_id, text, top_k=self.top_k)
        root, owners = self.collections[collection]
        owner = owners.get(preprocess_caption(text))
        rows = [{"rank": r.rank, "file": r.path, "score": round(float(r.score), 4),
                 "associated": "" if owner is None else ("✓" if Path(r.path).name == owner else "✗"),
                 "path": str(index.root / r.path)}
                for r in response]
        return pd.DataFrame(rows), list(response.notes)


def spectrogram_png(path: str | Path, width: float = 3.0) -> bytes:
    """A small log-mel picture of a file, as PNG bytes for an ipywidgets Image."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from salsa_lib.audio import load_audio
    from salsa_lib.reports import plot_log_mel

    wave = load_audio(path)[: 32000 * 10]
    fig, ax = plt.subplots(figsize=(width, 1.2))
    plot_log_mel(ax, wave, 32000)
    ax.set_axis_off()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80, bbox_inches="tight", pad_inches=0)
    plt.close(fig)
    return buffer.getvalue()


def build_app(demo: QueryDemo):
    """The widget: text box (Enter or button), model and collection choice, result rows with players."""
    import ipywidgets as w

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
            label = w.HTML(f"<b>{row.rank}.</b> {row.associated} {row.file} <small>score {row.score:.3f}</small>",
                           layout=w.Layout(width="40%"))
            audio = w.Audio(value=Path(row.path).read_bytes(), format=Path(row.path).suffix.lstrip(".").lower(),
                            autoplay=False, loop=False)
            picture = w.Image(value=spectrogram_png(row.path), format="png", layout=w.Layout(width="220px"))
            rows.append(w.HBox([label, audio, picture], _dom_classes=["salsa-result"]))
        results.children = rows

    query.on_submit(run)
    button.on_click(run)
    return w.VBox([w.HBox([query, button]), w.HBox([model, collection]), results])


def default_collections(profile: str, audio_dir: str = "") -> dict[str, tuple[Path, dict[str, str]]]:
    """The test split of the profile's data set, and optionally any folder."""
    data = datasets.load_data_config(profile)
    root = datasets.locate(data).root
    collections = {"test split": (root / datasets.SPLITS["test"], caption_owners(root, datasets.SPLITS["test"]))}
    if audio_dir:
        collections[f"folder: {audio_dir}"] = (Path(audio_dir).expanduser().resolve(), {})
    return collections


def example_queries(profile: str, n: int, given: str = "") -> list[str]:
    """Given queries (';'-separated) or the first caption of the first n test clips."""
    if given:
        return [q.strip() for q in given.split(";") if q.strip()]
    data = datasets.load_data_config(profile)
    root = datasets.locate(data).root
    from salsa_lib.data import read_captions_csv

    frame = read_captions_csv(root / f"clotho_captions_{datasets.SPLITS['test']}.csv")
    return list(frame["caption_1"].head(n))


def run_examples(demo: QueryDemo, queries: list[str], model_name: str, collection: str) -> pd.DataFrame:
    tables = []
    for text in queries:
        table, notes = demo.query(text, model_name, collection)
        tables.append(table.drop(columns="path").assign(query=text, notes="; ".join(notes)))
    return pd.concat(tables, ignore_index=True)[["query", "rank", "file", "score", "associated", "notes"]]
