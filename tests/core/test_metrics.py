"""Retrieval metrics against torchmetrics (an independent implementation) and hand-made cases."""

import numpy as np
import pytest
import torch
from torchmetrics.functional.retrieval import retrieval_average_precision
from torchmetrics.retrieval import RetrievalMAP, RetrievalRecall

from salsa_lib.core.metrics import (audio_to_text_ranks, chance_map_at_k, chance_multi_map_at_k, metrics_from_ranks,
                                    multi_relevance_map_at_k, ranks_of_relevant, require_finite, text_to_audio_metrics)
from salsa_lib.errors import NonFiniteError


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


def test_rank_beyond_ten_scores_zero_and_ties_count_against_the_relevant_item():
    assert metrics_from_ranks(np.array([11]))["mAP@10"] == 0.0
    assert metrics_from_ranks(np.array([10]))["mAP@10"] == pytest.approx(0.1)
    tied = np.array([[0.5, 0.5, 0.5], [0.9, 0.5, 0.5]])
    assert list(ranks_of_relevant(tied, np.array([0, 1]))) == [3, 3]
    constant = np.zeros((20, 20))  # a model that scores everything alike must not look perfect
    assert metrics_from_ranks(ranks_of_relevant(constant, np.arange(20)))["R@10"] == 0.0


def test_audio_to_text_best_own_caption():
    # 2 clips, 4 captions (2 per clip here); similarity is (captions, clips)
    similarity = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7], [0.2, 0.6]])
    caption_audio = np.array([0, 0, 1, 1])
    # clip 0: captions score .1 .8 .3 .2 -> its best own (.8) is rank 1; clip 1: .9 .2 .7 .6 -> own best .7, rank 2
    assert list(audio_to_text_ranks(similarity, caption_audio)) == [1, 2]


def test_multi_relevance_map_by_hand_and_against_torchmetrics():
    similarity = np.array([[0.9, 0.8, 0.7, 0.1], [0.4, 0.3, 0.2, 0.1]])
    relevant = np.array([[True, False, True, False], [False, False, False, True]])
    # query 0: hits at ranks 1 and 3 -> (1 + 2/3) / 2; query 1: hit at rank 4 -> 1/4
    assert multi_relevance_map_at_k(similarity, relevant) == pytest.approx(((1 + 2 / 3) / 2 + 0.25) / 2)
    rng = np.random.default_rng(5)
    sim, rel = rng.normal(size=(30, 40)), rng.random((30, 40)) < 0.1
    rel[np.arange(30), rng.integers(0, 40, 30)] = True
    # torchmetrics averages precision over the relevant items found in the top 10; our AP@10 divides by
    # min(m, 10) instead (a query that finds 1 of its 5 relevant clips is not perfect), so rescale
    expected = []
    for q in range(30):
        preds = torch.tensor(sim[q] - sim.min() + 1.0)
        found = int(torch.tensor(rel[q])[preds.topk(10).indices].sum())
        ap = float(retrieval_average_precision(preds, torch.tensor(rel[q]), top_k=10))
        expected.append(ap * found / min(rel[q].sum(), 10))
    assert multi_relevance_map_at_k(sim, rel) == pytest.approx(np.mean(expected), abs=1e-6)


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


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_scores_are_refused_by_name_never_ranked(bad):
    """A NaN similarity compares false with everything: ranked, its item would be 0th and mAP infinite."""
    similarity = np.eye(4)
    similarity[2, 1] = bad
    source = "member0 (best) on split 'val'"
    for metric in (lambda: ranks_of_relevant(similarity, np.arange(4), source),
                   lambda: audio_to_text_ranks(similarity, np.arange(4), source),
                   lambda: multi_relevance_map_at_k(similarity, np.eye(4, dtype=bool), source=source)):
        with pytest.raises(NonFiniteError, match=r"similarities of member0 \(best\) on split 'val': 1 of 4") as err:
            metric()
        assert "first: [2]" in str(err.value)
    audio = np.eye(3)
    captions = np.repeat(np.eye(3), 5, axis=0)
    captions[7] = bad
    with pytest.raises(NonFiniteError, match=r"caption embeddings of member0 \(best\) on split 'val'.*first: \[7\]"):
        text_to_audio_metrics(captions, audio, np.repeat(np.arange(3), 5), source)
    with pytest.raises(NonFiniteError, match="audio embeddings of the model"):
        text_to_audio_metrics(np.repeat(np.eye(3), 5, axis=0), np.full((3, 3), bad), np.repeat(np.arange(3), 5))


def test_a_rank_below_one_is_refused():
    with pytest.raises(NonFiniteError, match="ranks must be 1 or more, got 0"):
        metrics_from_ranks(np.array([1, 0, 3]))


def test_require_finite_names_the_rows():
    assert require_finite([[0.5, 1.0]], "x").dtype == np.float64
    with pytest.raises(NonFiniteError, match=r"audio embeddings of m: 2 of 3 rows .*first: \['b.wav', 'c.wav'\]"):
        require_finite(np.array([[0.0, 1.0], [np.nan, 0.0], [0.0, np.inf]]), "audio embeddings of m",
                       ["a.wav", "b.wav", "c.wav"])
