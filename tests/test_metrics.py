"""Retrieval metrics against torchmetrics (an independent implementation) and hand-made cases."""

import numpy as np
import pytest
import torch
from torchmetrics.retrieval import RetrievalMAP, RetrievalRecall

from salsa_lib.metrics import (chance_map_at_k, chance_multi_map_at_k, metrics_from_ranks, ranks_of_relevant,
                               text_to_audio_metrics)


def _torchmetrics(similarity, relevant):
    queries, candidates = similarity.shape
    # torchmetrics 1.9 ignores relevant items with a score <= 0 (retrieval_recall filters on preds > 0);
    # cosine similarities can be negative, so compare on scores shifted above zero (ranks unchanged)
    preds = torch.tensor(similarity - similarity.min() + 1.0).flatten()
    target = torch.zeros(queries, candidates, dtype=torch.bool)
    target[torch.arange(queries), torch.tensor(relevant)] = True
    indexes = torch.arange(queries).repeat_interleave(candidates)
    out = {"mAP@10": RetrievalMAP(top_k=10)(preds, target.flatten(), indexes=indexes)}
    for k in (1, 5, 10):
        out[f"R@{k}"] = RetrievalRecall(top_k=k)(preds, target.flatten(), indexes=indexes)
    return {name: float(value) for name, value in out.items()}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_torchmetrics_on_random_scores(seed):
    rng = np.random.default_rng(seed)
    similarity = rng.normal(size=(60, 25))
    relevant = rng.integers(0, 25, size=60)
    ours = metrics_from_ranks(ranks_of_relevant(similarity, relevant))
    assert ours == pytest.approx(_torchmetrics(similarity, relevant), abs=1e-6)


def test_hand_made_ranks():
    similarity = np.array([[0.9, 0.1, 0.5],   # relevant 0 -> rank 1
                           [0.9, 0.1, 0.5],   # relevant 2 -> rank 2
                           [0.9, 0.1, 0.5]])  # relevant 1 -> rank 3
    ranks = ranks_of_relevant(similarity, np.array([0, 2, 1]))
    assert list(ranks) == [1, 2, 3]
    out = metrics_from_ranks(ranks)
    assert out["mAP@10"] == pytest.approx((1 + 1 / 2 + 1 / 3) / 3)
    assert out["R@1"] == pytest.approx(1 / 3) and out["R@5"] == 1.0


def test_rank_beyond_ten_scores_zero_and_ties_favour_the_relevant_item():
    assert metrics_from_ranks(np.array([11]))["mAP@10"] == 0.0
    assert metrics_from_ranks(np.array([10]))["mAP@10"] == pytest.approx(0.1)
    tied = np.array([[0.5, 0.5, 0.5]])
    assert list(ranks_of_relevant(tied, np.array([2]))) == [1]


def test_text_to_audio_protocol_with_five_captions_per_clip():
    audio = np.eye(3)
    captions = np.repeat(np.eye(3), 5, axis=0)  # every caption points at its own clip
    out = text_to_audio_metrics(captions, audio, np.repeat(np.arange(3), 5))
    assert out == {"mAP@10": 1.0, "R@1": 1.0, "R@5": 1.0, "R@10": 1.0}


def test_chance_levels_against_simulation():
    rng = np.random.default_rng(0)
    n, m = 40, 3
    single, multi = [], []
    for _ in range(20000):
        order = rng.permutation(n)
        single.append(metrics_from_ranks(np.array([np.argmax(order == 0) + 1]))["mAP@10"])
        relevant = np.isin(order[:10], np.arange(m))
        precision = np.cumsum(relevant) / np.arange(1, 11)
        multi.append((precision * relevant).sum() / m)
    assert chance_map_at_k(n) == pytest.approx(np.mean(single), abs=3e-3)
    assert chance_multi_map_at_k(np.array([m]), n) == pytest.approx(np.mean(multi), abs=3e-3)
