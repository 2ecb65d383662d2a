"""The ensemble estimate's maths on hand-made matrices, and refusal of mismatched teacher embeddings."""

from types import SimpleNamespace

import numpy as np
import pytest
import scipy.sparse
import torch
import torch.nn.functional as F

from salsa_lib import runs
from salsa_lib.core.losses import correspondence_targets
from salsa_lib.errors import ConfigError, DataError
from salsa_lib.stages import correspondences as corr


def _unit(*shape, seed=0):
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)), dim=-1)


def test_ensemble_averages_cosines_before_the_softmax():
    audio, captions = _unit(2, 3, 4), _unit(2, 3, 4, seed=1)
    logits = corr.ensemble_logits(audio, captions, tau=0.05)
    by_hand = (audio[0] @ captions[0].T + audio[1] @ captions[1].T) / 2 / 0.05
    assert torch.allclose(logits, by_hand, atol=1e-6)
    p_rows, _ = correspondence_targets(logits)
    averaged_probabilities = sum(torch.softmax(a @ c.T / 0.05, dim=1) for a, c in zip(audio, captions)) / 2
    assert not torch.allclose(p_rows, averaged_probabilities, atol=1e-3)  # ensembling happens on similarities


def test_self_distillation_is_one_member():
    audio, captions = _unit(1, 4, 8), _unit(1, 4, 8, seed=2)
    assert torch.allclose(corr.ensemble_logits(audio, captions, 0.05), audio[0] @ captions[0].T * 20, atol=1e-5)


def test_identical_members_give_the_single_member_estimate():
    audio, captions = _unit(1, 5, 8), _unit(1, 5, 8, seed=3)
    tripled = corr.ensemble_logits(audio.repeat(3, 1, 1), captions.repeat(3, 1, 1), 0.05)
    assert torch.allclose(tripled, corr.ensemble_logits(audio, captions, 0.05), atol=1e-5)


@pytest.mark.parametrize("block", [1, 3, 7, 10_000])
def test_full_split_estimate_in_blocks_equals_direct(block):
    audio, captions = _unit(2, 6, 8), _unit(2, 30, 8, seed=4)
    direct = ((audio[0] @ captions[0].T + audio[1] @ captions[1].T) / 2).numpy()
    assert np.allclose(corr.full_split_similarity(audio, captions, block), direct, atol=1e-6)


def test_estimate_quality_and_identity_baseline():
    truth = scipy.sparse.csr_matrix(np.array([[1, 1, 0, 0, 0, 1, 0, 0, 0, 0],
                                              [0, 0, 0, 0, 0, 1, 1, 1, 1, 1]], dtype=bool))
    perfect = corr.estimate_quality(truth.toarray().astype(float), truth)
    assert perfect == {"ROC-AUC": 1.0, "AP": 1.0}
    identity = corr.identity_estimate(2)
    assert identity.shape == (2, 10) and identity.sum() == 10 and identity[1, 5:].all()
    baseline = corr.estimate_quality(identity, truth)
    assert baseline["ROC-AUC"] < 1.0 and baseline["AP"] < 1.0  # misses clip 0's caption 5 match


def _split(names=("a.wav", "b.wav"), text="a dog barks"):
    return SimpleNamespace(split="development", file_names=list(names),
                           captions=[[f"{text} {k}" for k in range(5)] for _ in names], n_clips=len(names))


def test_stored_embeddings_must_match_the_split(tmp_path):
    split = _split()
    checkpoint = tmp_path / "best.ckpt"
    checkpoint.write_bytes(b"weights")
    path = tmp_path / "embeddings_train.pt"
    corr.save_embeddings(path, {"audio": _unit(2, 4), "captions": _unit(10, 4)}, split, checkpoint, "member0")
    loaded = corr.load_embeddings(path, split)
    assert loaded["audio"].dtype == torch.float16 and loaded["member"] == "member0"
    with pytest.raises(DataError, match="member0.*other data"):
        corr.load_embeddings(path, _split(names=("b.wav", "a.wav")))  # same clips, other order
    with pytest.raises(DataError, match="other data"):
        corr.load_embeddings(path, _split(text="rain falls"))
    with pytest.raises(DataError, match="missing"):
        corr.load_embeddings(tmp_path / "nope.pt", split)
    assert corr.load_embeddings(path, split, checkpoint)["member"] == "member0"
    checkpoint.write_bytes(b"retrained weights")
    with pytest.raises(DataError, match="another checkpoint"):
        corr.load_embeddings(path, split, checkpoint)


def test_teacher_lists_are_checked():
    with pytest.raises(ConfigError, match="empty"):
        corr.stack_teachers([])
    small = {"member": "member0", "audio": torch.zeros(2, 4), "captions": torch.zeros(10, 4)}
    big = {"member": "member1", "audio": torch.zeros(2, 8), "captions": torch.zeros(10, 8)}
    with pytest.raises(ConfigError, match="member1"):
        corr.stack_teachers([small, big])


def test_member_folders_name_what_is_missing(tmp_path, monkeypatch):
    monkeypatch.setenv("SALSA_HOME", str(tmp_path))
    with pytest.raises(ConfigError, match="members.json"):
        runs.member_folders("test")
    stage = tmp_path / "results/test/stage1"
    (stage / "member0/checkpoints").mkdir(parents=True)
    (stage / "member0/checkpoints/best.ckpt").write_bytes(b"x")
    (stage / "members.json").write_text('{"members": ["member0", "member1"]}')
    with pytest.raises(ConfigError, match="member1"):
        runs.member_folders("test")
    assert [f.name for f in runs.member_folders("test", ["member0"])] == ["member0"]
    with pytest.raises(ConfigError, match="empty"):
        runs.member_folders("test", [])


def test_example_batch_puts_true_matches_off_the_diagonal():
    n_clips, owners = 12, np.repeat(np.arange(12), 5)
    truth = np.zeros((n_clips, 5 * n_clips), dtype=np.int8)
    truth[owners, np.arange(5 * n_clips)] = 1
    truth[3, 5 * 7 + 2] = truth[9, 5 * 1] = 1  # caption 37 (clip 7) also describes clip 3; caption 5 clip 9
    for seed in range(5):
        items = corr.example_batch(n_clips, 8, np.random.default_rng(seed), scipy.sparse.csr_matrix(truth))
        assert len(items) == 8 and len(set(owners[items])) == 8  # one caption per clip
        in_batch = truth[owners[items]][:, items]
        assert in_batch.diagonal().all() and (in_batch.sum() - 8) == 2  # both pairs, off the diagonal
        assert in_batch[1, 0] == 1 and in_batch[3, 2] == 1  # each pair: caption, then a caption of its other clip
    plain = corr.example_batch(n_clips, 8, np.random.default_rng(0))
    assert len(set(owners[plain])) == 8
    assert len(corr.example_batch(3, 8, np.random.default_rng(0), truth[:3, :15])) == 3  # no more than the clips


def test_the_quality_table_in_words_names_every_ensemble_and_calls_nothing_a_finding():
    import pandas as pd

    quality = pd.DataFrame({"estimate": ["i = j (stage-1 assumption)", "member0", "member1", "member2", "ensemble",
                                         "mixed", "truth (ceiling)"],
                            "audio encoder": ["", "passt_small", "passt_small", "frames_small", "", "", ""],
                            "ROC-AUC": [0.5] * 7, "AP": [0.14, 0.198, 0.2, 0.15, 0.211, 0.25, 1.0]})
    words = corr.quality_in_words(quality)
    assert "AP 15.00–20.00 %" in words and "best member1 (passt_small), lowest member2 (frames_small)" in words
    assert "the same-architecture ensemble 21.10 % and the mixed ensemble 25.00 %" in words
    assert "i = j assumption 14.00 %" in words
    assert ("The mixed ensemble is 3.90 points above the same-architecture ensemble and +5.00 points from the best "
            "member.") in words
    assert "not a finding" in words
