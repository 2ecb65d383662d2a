"""Retrieval metrics of the ClothoV2 protocol (method §9), as small pure functions."""

from __future__ import annotations

import numpy as np

from salsa_lib.errors import NonFiniteError


def chance_map_at_k(n_candidates: int, k: int = 10) -> float:
    """Expected mAP@k of a random ranking with one relevant candidate per query.

    The relevant clip lands at each rank with probability 1/N, and AP is 1/rank within the top k.
    """
    ranks = np.arange(1, min(k, n_candidates) + 1)
    return float(np.sum(1.0 / ranks) / n_candidates)


def chance_multi_map_at_k(n_relevant: np.ndarray, n_candidates: int, k: int = 10) -> float:
    """Expected multi-relevance mAP@k of a random ranking, averaged over queries.

    AP@k = (1 / min(m, k)) * sum_{r<=k} P@r * rel_r. Under a random permutation
    E[P@r * rel_r] = (1/r) * [m/N + (r-1) * m(m-1) / (N(N-1))], which gives the exact expectation.
    """
    m = np.asarray(n_relevant, dtype=float)[:, None]
    n = float(n_candidates)
    ranks = np.arange(1, min(k, n_candidates) + 1, dtype=float)[None, :]
    pair = m * (m - 1) / (n * (n - 1)) if n > 1 else 0.0
    expected = ((m / n + (ranks - 1) * pair) / ranks).sum(axis=1)
    return float(np.mean(expected / np.minimum(m[:, 0], k)))


def require_finite(values, what: str, row_names=None) -> np.ndarray:
    """``values`` as float64, or a NonFiniteError naming ``what`` and its first rows with NaN or inf.

    A NaN similarity compares false with everything, so ranking it puts its item at rank 0 and makes
    mAP infinite: a model that overflowed or diverged must stop here, never become a result.
    ``row_names``: what each row is (clip file names), for the message; row numbers otherwise.
    """
    array = np.asarray(values, dtype=np.float64)
    finite = np.atleast_1d(np.isfinite(array))
    if finite.all():
        return array
    bad = np.flatnonzero(~finite.reshape(len(finite), -1).all(axis=1))
    names = [row_names[i] if row_names is not None else int(i) for i in bad[:5]]
    raise NonFiniteError(f"{what}: {len(bad)} of {len(finite)} rows hold NaN or infinite values (first: {names}); "
                         "the model overflowed or diverged, so nothing is ranked")


def ranks_of_relevant(similarity: np.ndarray, relevant: np.ndarray, source: str = "the model") -> np.ndarray:
    """1-based rank of each query's relevant candidate; ties count against it (pessimistic).

    ``similarity`` is (queries, candidates); ``relevant[q]`` is the column of query q's one relevant
    item. Pessimistic ties mean a model that scores everything alike gets chance-level or worse
    metrics, never perfect ones. ``source`` (model and split) names the scores if they are not finite.
    """
    similarity = require_finite(similarity, f"similarities of {source}")
    own = similarity[np.arange(len(similarity)), relevant]
    return (similarity >= own[:, None]).sum(axis=1)


def metrics_from_ranks(ranks: np.ndarray, ks=(1, 5, 10), map_k: int = 10) -> dict[str, float]:
    """mAP@k (reciprocal rank truncated at k, one relevant item) and R@k, as fractions (method §9)."""
    ranks = np.asarray(ranks)
    if len(ranks) and ranks.min() < 1:  # only NaN scores rank an item 0th, and 1/0 is an infinite mAP
        raise NonFiniteError(f"ranks must be 1 or more, got {ranks.min()}: were the similarities NaN?")
    out = {f"mAP@{map_k}": float(np.where(ranks <= map_k, 1.0 / ranks, 0.0).mean())}
    out.update({f"R@{k}": float((ranks <= k).mean()) for k in ks})
    return out


def text_to_audio_metrics(caption_embeddings, audio_embeddings, caption_audio: np.ndarray,
                          source: str = "the model") -> dict[str, float]:
    """ClothoV2 protocol: every caption queries all clips; its own clip is the one relevant item.

    Embeddings are L2-normalised rows; ``caption_audio[q]`` is the clip index of caption q.
    ``source`` (model and split) names the embeddings if they are not finite.
    """
    captions = require_finite(caption_embeddings, f"caption embeddings of {source}")
    audio = require_finite(audio_embeddings, f"audio embeddings of {source}")
    return metrics_from_ranks(ranks_of_relevant(captions @ audio.T, np.asarray(caption_audio), source))


def audio_to_text_ranks(similarity: np.ndarray, caption_audio: np.ndarray, source: str = "the model") -> np.ndarray:
    """Audio queries over all captions: rank of the best-ranked caption of the query's own clip.

    ``similarity`` is (captions, clips) as for text-to-audio; ties count against the query.
    """
    scores = require_finite(similarity, f"similarities of {source}").T  # (clips, captions)
    own = np.asarray(caption_audio)[None, :] == np.arange(scores.shape[0])[:, None]
    best_own = np.where(own, scores, -np.inf).max(axis=1)
    return (np.where(own, -np.inf, scores) >= best_own[:, None]).sum(axis=1) + 1


def multi_relevance_map_at_k(similarity: np.ndarray, relevant: np.ndarray, k: int = 10,
                             source: str = "the model") -> float:
    """mAP@k counting every truly matching clip as relevant (synthetic benchmark).

    ``relevant`` is a boolean (queries, candidates) matrix; AP@k = sum_{r<=k} P@r rel_r / min(m, k)
    with m the query's number of relevant clips. Ties are broken against relevant clips.
    """
    similarity = require_finite(similarity, f"similarities of {source}")
    relevant = np.asarray(relevant, dtype=bool)
    # sort by score descending; among equal scores put irrelevant candidates first (pessimistic)
    order = np.lexsort((relevant, -similarity), axis=1)[:, :k]
    hits = np.take_along_axis(relevant, order, axis=1)
    precision = np.cumsum(hits, axis=1) / np.arange(1, hits.shape[1] + 1)
    n_relevant = np.minimum(relevant.sum(axis=1), k)
    return float(np.mean((precision * hits).sum(axis=1) / np.maximum(n_relevant, 1)))
