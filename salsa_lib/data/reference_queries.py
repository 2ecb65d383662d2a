"""The original SALSA README's example: two ClothoV2 evaluation queries with the released model's top 5.

The published lists are data (``reference/readme_example_queries.csv``, with their source). Notebook 04
runs the same two sentences as free-text queries with every model, maps the retrieved clips to
Freesound ids through ClothoV2's metadata CSV (``sound_id``) and sets them beside the published lists.
Queries are free text, so this works on any collection in the ClothoV2 layout that has metadata.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pandas as pd

from salsa_lib.core.captions import preprocess_caption
from salsa_lib.errors import DataError

REFERENCE = Path(__file__).parent.parent / "reference" / "readme_example_queries.csv"


def readme_example_queries() -> pd.DataFrame:
    """One row per published result: query_number, query, rank, sound_id, associated (✓/✗), source."""
    return pd.read_csv(REFERENCE, encoding="utf-8")


def metadata_csv_path(root: str | Path, split: str) -> Path:
    return Path(root) / f"clotho_metadata_{split}.csv"


def read_sound_ids(root: str | Path, split: str) -> dict[str, int] | None:
    """file_name -> Freesound id from ``clotho_metadata_<split>.csv``; None when the data have no such file.

    ClothoV2's metadata files are not all UTF-8, so Latin-1 is the fallback (it decodes any byte).
    """
    path = metadata_csv_path(root, split)
    if not path.is_file():
        return None
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    rows = list(csv.DictReader(io.StringIO(text, newline="")))
    if rows and not {"file_name", "sound_id"} <= set(rows[0]):
        raise DataError(f"{path}: needs columns file_name and sound_id (found: {', '.join(rows[0])})")
    ids = {}
    for line, row in enumerate(rows, start=2):
        try:
            ids[row["file_name"].strip()] = int(float(row["sound_id"]))
        except (TypeError, ValueError):
            raise DataError(f"{path}: line {line}, column 'sound_id': {row['sound_id']!r} is not a "
                            "Freesound id") from None
    return ids


def top_k_sound_ids(scores: np.ndarray, split, sound_ids: dict[str, int], queries: list[str],
                    k: int = 5) -> pd.DataFrame:
    """Our top-k clips per free-text query as Freesound ids; ✓ when the query is one of the clip's captions."""
    rows = []
    for q, query in enumerate(queries):
        wanted = preprocess_caption(query)
        for rank, clip in enumerate(np.argsort(-scores[q], kind="stable")[:k], start=1):
            name = split.file_names[clip]
            own = any(preprocess_caption(c) == wanted for c in split.captions[clip])
            rows.append({"query_number": q + 1, "rank": rank, "sound_id": sound_ids.get(name),
                         "file_name": name, "associated": "✓" if own else "✗"})
    return pd.DataFrame(rows)


def compare_with_published(ours: dict[str, pd.DataFrame], reference: pd.DataFrame) -> pd.DataFrame:
    """Per model and query: published and our top-k ids side by side and how many ids they share."""
    rows = []
    for model, table in ours.items():
        for number, published in reference.groupby("query_number"):
            mine = table[table["query_number"] == number]
            published_ids = published.sort_values("rank")["sound_id"].tolist()
            our_ids = mine.sort_values("rank")["sound_id"].tolist()
            rows.append({
                "model": model, "query_number": number, "query": published["query"].iloc[0],
                "published": " ".join(f"{m} {i}" for m, i in zip(published.sort_values("rank")["associated"],
                                                                  published_ids)),
                "ours": " ".join(f"{m} {i}" for m, i in zip(mine.sort_values("rank")["associated"], our_ids)),
                "overlap": len(set(published_ids) & {i for i in our_ids if i is not None}),
            })
    return pd.DataFrame(rows)
