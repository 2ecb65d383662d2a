"""Losses against hand computations and brute-force loops on seeded tiny tensors."""

import math

import torch

from salsa_lib.core.losses import contrastive_loss, correspondence_targets, distillation_loss


def _brute_contrastive(logits, ids):
    b = len(ids)
    pos = [(i, j) for i in range(b) for j in range(b) if ids[i] == ids[j]]
    t2a = [logits[i, j] - torch.logsumexp(logits[:, j], 0) for i, j in pos]
    a2t = [logits[i, j] - torch.logsumexp(logits[i, :], 0) for i, j in pos]
    return -0.5 * (sum(t2a) / len(pos) + sum(a2t) / len(pos))


def test_contrastive_two_items_by_hand():
    logits = torch.tensor([[2.0, 0.0], [0.0, 2.0]])
    expected = -math.log(math.exp(2) / (math.exp(2) + 1))  # each direction, each positive the same
    assert torch.isclose(contrastive_loss(logits, torch.tensor([0, 1])), torch.tensor(expected))


def test_contrastive_matches_brute_force_with_duplicate_clips():
    torch.manual_seed(0)
    logits = torch.randn(6, 6) * 3
    ids = torch.tensor([4, 1, 4, 2, 1, 9])  # clips 4 and 1 appear twice: extra positives
    assert torch.isclose(contrastive_loss(logits, ids), _brute_contrastive(logits, ids), atol=1e-6)
    # duplicates change the loss compared with the plain diagonal assumption
    assert not torch.isclose(contrastive_loss(logits, ids), contrastive_loss(logits, torch.arange(6)))


def test_contrastive_perfect_separation_goes_to_zero():
    assert contrastive_loss(torch.eye(4) * 100, torch.arange(4)) < 1e-6


def test_targets_normalise_in_both_directions():
    torch.manual_seed(1)
    p_caption, p_audio = correspondence_targets(torch.randn(5, 5))
    assert torch.allclose(p_caption.sum(dim=1), torch.ones(5))
    assert torch.allclose(p_audio.sum(dim=0), torch.ones(5))


def test_distillation_equals_brute_force_and_is_minimal_at_the_teacher():
    torch.manual_seed(2)
    student, teacher = torch.randn(4, 4) * 2, torch.randn(4, 4) * 2
    rows = -sum((torch.softmax(teacher[i], 0) * torch.log_softmax(student[i], 0)).sum() for i in range(4)) / 4
    cols = -sum((torch.softmax(teacher[:, j], 0) * torch.log_softmax(student[:, j], 0)).sum() for j in range(4)) / 4
    assert torch.isclose(distillation_loss(student, teacher), 0.5 * (rows + cols), atol=1e-6)
    # the gradient pulls the student towards the teacher: the loss at the teacher's logits is lower
    assert distillation_loss(teacher, teacher) < distillation_loss(student, teacher)


def test_distillation_with_identity_teacher_approaches_contrastive_loss():
    torch.manual_seed(3)
    student = torch.randn(5, 5)
    hard_teacher = torch.eye(5) * 1e4  # one-hot targets: the i = j assumption
    assert torch.isclose(distillation_loss(student, hard_teacher), contrastive_loss(student, torch.arange(5)), atol=1e-5)
