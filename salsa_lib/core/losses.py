"""The two losses of SALSA as pure tensor functions (method §6 and §7.3).

Convention everywhere: ``logits[i, j] = cos(audio_i, caption_j) / tau`` -- rows are audio, columns
are captions, as in the paper's C matrix.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def contrastive_loss(logits: torch.Tensor, audio_ids: torch.Tensor) -> torch.Tensor:
    """Stage 1, L_sup: symmetric in-batch InfoNCE where positives are pairs sharing an audio clip.

    ``audio_ids[k]`` identifies the clip of batch item k (audio k and caption k come from item k).
    Two captions of one clip in a batch are both positives, and both stay in the denominators
    (method §6). Each direction is the mean log-likelihood over all positive pairs; L = -1/2 sum.
    """
    positives = audio_ids[:, None] == audio_ids[None, :]
    log_q_audio = F.log_softmax(logits, dim=0)  # q_a(a_i | c_j): which audio for caption j
    log_q_caption = F.log_softmax(logits, dim=1)  # q_c(c_j | a_i): which caption for audio i
    return -0.5 * (log_q_audio[positives].mean() + log_q_caption[positives].mean())


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over rows of -sum_j targets[i, j] * log softmax_j(logits[i, j])."""
    return -(targets * F.log_softmax(logits, dim=1)).sum(dim=1).mean()


def correspondence_targets(teacher_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Soft targets from the teachers' (ensembled) logits C_bar / tau, normalised within the batch.

    Returns (p_caption, p_audio): p_caption[i, :] sums to one over captions (softmax over j),
    p_audio[:, j] sums to one over audio (softmax over i).
    """
    return F.softmax(teacher_logits, dim=1), F.softmax(teacher_logits, dim=0)


def distillation_loss(logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Stage 2, L_dist = 1/2 [CE_rows(S, p_c) + CE_rows(S^T, p_a^T)] (method §7.3).

    No extra temperature and no T^2 factor: teacher and student share the fixed tau.
    """
    p_caption, p_audio = correspondence_targets(teacher_logits.detach())
    return 0.5 * (soft_cross_entropy(logits, p_caption) + soft_cross_entropy(logits.T, p_audio.T))
