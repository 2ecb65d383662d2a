"""L_dist trains: a student optimised on it moves its in-batch distributions toward the targets.

The loss tests next door check values and indexing; this one checks what stage 2 relies on. A tiny
dual encoder (two linear projections, normalised, scaled by a fixed tau as in method §5) is trained on
one fixed batch against fixed teacher logits whose matches lie off the diagonal. If the loss ignored
its targets (or read them transposed or shuffled), the student would not end near them.
"""

import torch
import torch.nn.functional as F

from salsa_lib.core.losses import correspondence_targets, distillation_loss

TAU = 0.05
BATCH, FEATURES, DIM = 8, 12, 6


def _student_logits(audio_proj, text_proj, audio, text):
    a = F.normalize(audio_proj(audio), dim=1)
    c = F.normalize(text_proj(text), dim=1)
    return a @ c.T / TAU  # rows audio, columns captions (the losses' convention)


def _kl_to(teacher_logits, logits) -> float:
    """KL(targets || student) of both in-batch distributions, each the mean over its B rows or columns."""
    p_caption, p_audio = correspondence_targets(teacher_logits)
    kl_caption = (p_caption * (p_caption.log() - F.log_softmax(logits, dim=1))).sum(dim=1).mean()
    kl_audio = (p_audio * (p_audio.log() - F.log_softmax(logits, dim=0))).sum(dim=0).mean()
    return float(0.5 * (kl_caption + kl_audio))


def _teacher_logits(generator):
    """Targets that disagree with i = j: audio i matches caption (i + 3) mod B, caption i + 5 a little."""
    cos = 0.1 * torch.randn(BATCH, BATCH, generator=generator)
    rows = torch.arange(BATCH)
    cos[rows, (rows + 3) % BATCH] += 0.8
    cos[rows, (rows + 5) % BATCH] += 0.4
    return cos.clamp(-1, 1) / TAU


def _problem(seed: int):
    """Fixed audio and text features, teacher logits, and the same rows given to other audio."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    audio = torch.randn(BATCH, FEATURES, generator=generator)
    text = torch.randn(BATCH, FEATURES, generator=generator)
    targets = _teacher_logits(generator)
    shuffled = targets[torch.randperm(BATCH, generator=generator)]
    assert not torch.equal(shuffled, targets)
    return audio, text, targets, shuffled


def _train_student(audio, text, goal, steps: int = 300):
    """Two linear projections trained with L_dist alone toward ``goal``; returns (start logits, end logits)."""
    audio_proj, text_proj = torch.nn.Linear(FEATURES, DIM), torch.nn.Linear(FEATURES, DIM)
    optimiser = torch.optim.Adam([*audio_proj.parameters(), *text_proj.parameters()], lr=0.02)
    with torch.no_grad():
        start = _student_logits(audio_proj, text_proj, audio, text)
    for _ in range(steps):
        optimiser.zero_grad()
        distillation_loss(_student_logits(audio_proj, text_proj, audio, text), goal).backward()
        optimiser.step()
    with torch.no_grad():
        return start, _student_logits(audio_proj, text_proj, audio, text)


def test_a_student_trained_with_l_dist_ends_near_its_targets_and_not_near_shuffled_ones():
    audio, text, targets, shuffled = _problem(0)
    first, logits = _train_student(audio, text, targets)
    start, end, end_shuffled = _kl_to(targets, first), _kl_to(targets, logits), _kl_to(shuffled, logits)

    assert end < 0.25 * start, (start, end)  # it moved toward the targets
    assert end < 0.5 * end_shuffled, (end, end_shuffled)  # toward these targets, not just any peaked ones
    # the student now ranks as the teacher does: each audio's top caption is the teacher's
    assert torch.equal(logits.argmax(dim=1), targets.argmax(dim=1))
    assert not torch.equal(logits.argmax(dim=1), torch.arange(BATCH))  # and not i = j


def test_the_distance_reached_depends_on_the_targets_given():
    """The same student and steps trained on the shuffled targets end near those instead."""
    audio, text, targets, shuffled = _problem(1)
    ends = {}
    for name, goal in (("targets", targets), ("shuffled", shuffled)):
        torch.manual_seed(1)  # the same initial student for both
        _, logits = _train_student(audio, text, goal)
        ends[name] = (_kl_to(targets, logits), _kl_to(shuffled, logits))
    assert ends["targets"][0] < ends["targets"][1] and ends["shuffled"][1] < ends["shuffled"][0], ends
