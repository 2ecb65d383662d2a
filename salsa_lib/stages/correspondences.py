"""Estimating audio-caption correspondences from frozen stage-1 members (method §7.1–7.2).

Each member embeds the training split once, in eval mode; the embeddings are stored index-aligned
with the data set (clip i, caption 5 i + k), so stage 2 builds the targets of any batch by indexing,
without running the teachers again. The ensemble estimate averages the members' cosine matrices
(ensembling on similarities, before the softmax) and scales them with the shared fixed tau.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import average_precision_score, roc_auc_score

from salsa_lib import runs
from salsa_lib.core.checkpoints import load_member, saved_config
from salsa_lib.data.splits import CAPTIONS_PER_CLIP, ClothoSplit, caption_clips, split_fingerprint
from salsa_lib.errors import ConfigError, DataError
from salsa_lib.files import atomic_path, file_digest
from salsa_lib.stages.embedding import embed_split


def save_embeddings(path: Path, embeddings: dict, split: ClothoSplit, checkpoint: Path, member: str,
                    checkpoint_sha256: str | None = None) -> None:
    """Stored with what identifies them: the data (fingerprint) and the model (checkpoint hash)."""
    payload = {"audio": embeddings["audio"].half(), "captions": embeddings["captions"].half(),
               "split": split.split, "fingerprint": split_fingerprint(split), "member": member,
               "checkpoint_sha256": checkpoint_sha256 or file_digest(checkpoint)}
    with atomic_path(path, suffix=".pt") as tmp, open(tmp, "wb") as handle:  # a file object: same bytes every time
        torch.save(payload, handle)


def load_embeddings(path: Path, split: ClothoSplit, checkpoint: Path | None = None) -> dict:
    """A member's stored embeddings, refused if they belong to other data (or another ``checkpoint``)."""
    if not path.exists():
        raise DataError(f"teacher embeddings {path} are missing: run notebook 02 (correspondences) first")
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if payload["fingerprint"] != split_fingerprint(split):
        raise DataError(f"teacher embeddings {path} (member {payload['member']}) were computed on other data "
                        f"than the current {split.split} split (different clips, captions or order); recompute them")
    if checkpoint is not None and payload["checkpoint_sha256"] != file_digest(checkpoint):
        raise DataError(f"teacher embeddings {path} (member {payload['member']}) come from another checkpoint "
                        f"than {checkpoint} (was the member retrained?); rerun notebook 02")
    n = split.n_clips
    if payload["audio"].shape[0] != n or payload["captions"].shape[0] != CAPTIONS_PER_CLIP * n:
        raise DataError(f"teacher embeddings {path}: {payload['audio'].shape[0]} clips / "
                        f"{payload['captions'].shape[0]} captions, the split has {n} / {CAPTIONS_PER_CLIP * n}")
    return payload


def stack_teachers(payloads: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
    """(M, n_clips, D) audio and (M, n_captions, D) caption embeddings of M teachers, float32."""
    if not payloads:
        raise ConfigError("the teacher list is empty: name at least one stage-1 member")
    dims = {p["member"]: p["audio"].shape[1] for p in payloads}
    if len(set(dims.values())) > 1:
        raise ConfigError(f"teachers embed into different sizes: {dims}")
    return (torch.stack([p["audio"].float() for p in payloads]),
            torch.stack([p["captions"].float() for p in payloads]))


def ensemble_logits(audio: torch.Tensor, captions: torch.Tensor, tau: float) -> torch.Tensor:
    """C_bar / tau: the mean over M teachers of their cosine matrices (method §7.2 and §12 item 4).

    ``audio`` (M, B_a, D) and ``captions`` (M, B_c, D) are L2-normalised; result (B_a, B_c).
    """
    with torch.autocast(audio.device.type, enabled=False):  # fp32 under AMP, like the student's logits
        return torch.einsum("mad,mcd->ac", audio.float(), captions.float()) / (audio.shape[0] * tau)


def truth_logits(truth: torch.Tensor, audio_idx: torch.Tensor, caption_idx: torch.Tensor, tau: float) -> torch.Tensor:
    """The known correspondences of a batch as teacher logits: a teacher whose cosine is 1 for true pairs, 0 else.

    ``truth`` (n_clips, n_captions) is the synthetic set's 0/1 matrix; the result (B_a, B_c) goes
    through the same in-batch normalisation as ``ensemble_logits`` (softmax of logits over rows and
    columns), which at tau = 0.05 spreads each row's mass evenly over its true matches in the batch.
    """
    return truth[audio_idx][:, caption_idx].float() / tau


def full_split_similarity(audio: torch.Tensor, captions: torch.Tensor, block: int = 2048) -> np.ndarray:
    """The ensemble's mean cosine for every (clip, caption) pair of a split, computed in caption blocks.

    Memory stays at one (n_clips, block) slice per teacher on top of the float32 result: for
    ClothoV2 development (3,839 x 19,195) the result is 295 MB and a block of 2,048 adds 31 MB.
    """
    n_teachers, n_clips, _ = audio.shape
    out = np.empty((n_clips, captions.shape[1]), dtype=np.float32)
    for start in range(0, captions.shape[1], block):
        stop = min(start + block, captions.shape[1])
        out[:, start:stop] = ensemble_logits(audio, captions[:, start:stop], 1.0).numpy()
    return out


# --------------------------------------------------------------------------- notebook 02's stage


def embeddings_path(member_folder: Path, split: str = "train") -> Path:
    return member_folder / f"embeddings_{split}.pt"


def embed_members(profile: str, split: ClothoSplit, batch_size: int = 32, device: str = "cpu",
                  force: bool = False) -> list[Path]:
    """Cache-or-compute (``force``: compute) each stage-1 member's embeddings of ``split`` with its best checkpoint."""
    done, fingerprint = [], split_fingerprint(split)
    for folder in runs.member_folders(profile):
        checkpoint = runs.checkpoint(folder)
        path, digest = embeddings_path(folder, "train"), file_digest(checkpoint)  # hashed once (GBs for the paper)
        if path.exists() and not force:
            stored = torch.load(path, map_location="cpu", weights_only=True)
            if stored["fingerprint"] == fingerprint and stored["checkpoint_sha256"] == digest:
                done.append(path)
                continue
        model, config = load_member(checkpoint)
        embeddings = embed_split(model, split, config.eval_seconds, batch_size, device)
        save_embeddings(path, embeddings, split, checkpoint, folder.name, checkpoint_sha256=digest)
        done.append(path)
    return done


def estimate_quality(similarity: np.ndarray, truth) -> dict:
    """How well scores recover the true correspondences: ROC-AUC and average precision over all pairs."""
    labels = np.asarray(truth.todense()).ravel().astype(bool)
    scores = np.asarray(similarity, dtype=np.float64).ravel()
    return {"ROC-AUC": float(roc_auc_score(labels, scores)), "AP": float(average_precision_score(labels, scores))}


def identity_estimate(n_clips: int) -> np.ndarray:
    """The stage-1 assumption as an estimate: caption j describes clip j // 5 and nothing else."""
    owners = caption_clips(n_clips)
    estimate = np.zeros((n_clips, len(owners)), dtype=np.float32)
    estimate[owners, np.arange(len(owners))] = 1.0
    return estimate


def teachers_tau(profile: str) -> float:
    """The fixed temperature the stage-1 members were trained with, read from their checkpoints.

    The estimate softens the ensemble's cosines with the members' own tau (method §7.2); members trained
    with different values have no common one, so that is refused.
    """
    taus = {folder.name: saved_config(runs.checkpoint(folder)).tau for folder in runs.member_folders(profile)}
    if len(set(taus.values())) != 1:
        raise ConfigError(f"the stage-1 members were trained with different tau {taus}: no common temperature "
                          "to soften their ensemble with; retrain them with one value")
    return next(iter(taus.values()))


def quality_table(estimates: dict[str, np.ndarray], truth) -> pd.DataFrame:
    """ROC-AUC and AP of each named estimate against the true correspondences, one row each, in order."""
    return pd.DataFrame([{"estimate": name, **estimate_quality(scores, truth)} for name, scores in estimates.items()])


def example_batch(n_clips: int, size: int, rng: np.random.Generator, truth=None) -> np.ndarray:
    """Caption indices of a batch to draw, one caption per clip (so the diagonal pairs each clip with its own).

    With the truth known (clips x captions, dense or sparse), up to ``size // 4`` pairs come first: a
    caption, then a caption of another clip that the first truly describes, so the picture holds true
    matches off the diagonal, which stage 1 calls negatives. The rest are drawn at random.
    """
    owners = caption_clips(n_clips)
    chosen: list[int] = []
    if truth is not None:
        for j in rng.permutation(len(owners)):
            if len(chosen) >= 2 * (size // 4):
                break
            others = [i for i in truth[:, j].nonzero()[0] if i != owners[j] and i not in owners[chosen]]
            if others and owners[j] not in owners[chosen]:
                clip = rng.choice(others)
                chosen += [int(j), int(clip * CAPTIONS_PER_CLIP + rng.integers(CAPTIONS_PER_CLIP))]
    for j in rng.permutation(len(owners)):
        if len(chosen) >= min(size, n_clips):
            break
        if owners[j] not in owners[chosen]:
            chosen.append(int(j))
    return np.asarray(chosen)


def ensemble_estimates(profile: str, payloads: list[dict], block: int = 2048) -> dict[str, np.ndarray]:
    """Each ensemble kind's full-split mean cosine (``runs.ensembles``: one architecture, every family),
    from the members' stored embeddings (``payloads``, as ``load_embeddings`` gives them)."""
    position = {payload["member"]: m for m, payload in enumerate(payloads)}
    out = {}
    for kind, names in runs.ensembles(profile).items():
        missing = [name for name in names if name not in position]
        if missing:
            raise DataError(f"the {kind} ensemble needs the embeddings of {missing}: rerun notebook 02")
        audio, captions = stack_teachers([payloads[position[name]] for name in names])
        out[kind] = full_split_similarity(audio, captions, block)
    return out


def ensemble_membership(profile: str) -> pd.DataFrame:
    """Which members form each ensemble kind, of which audio encoders, and whether a student's own
    initial member is among its teachers (it is, in both kinds, as in the original)."""
    encoders = runs.member_audio_encoders(profile)
    initial = {name for name, family in encoders.items() if family == encoders["member0"]}  # students start there
    rows = []
    for kind, names in runs.ensembles(profile).items():
        rows.append({"ensemble": kind, "members": ", ".join(names),
                     "audio encoders": ", ".join(dict.fromkeys(encoders[name] for name in names)),
                     "student's own member included": initial <= set(names)})
    return pd.DataFrame(rows)


ENSEMBLE_NAMES = {"ensemble": "same-architecture ensemble", "mixed": "mixed ensemble"}  # runs.ENSEMBLE_KINDS in words


def quality_in_words(quality: pd.DataFrame) -> str:
    """What notebook 02's quality table shows, in a few sentences: each ensemble's AP against the best
    and worst member's and the i = j assumption's, in percent. One estimate each on one split: a
    ranking of this run, not a finding with an interval."""
    ap = quality.set_index("estimate")["AP"].mul(100)
    members = ap[ap.index.str.fullmatch(r"member\d+")]
    family = quality.set_index("estimate").get("audio encoder", pd.Series(dtype=str))
    named = {name: f"{name}" + (f" ({family[name]})" if family.get(name) else "") for name in members.index}
    said = []
    if len(members):
        best, worst = members.idxmax(), members.idxmin()
        said.append(f"Against the true correspondences the members score AP {members.min():.2f}–{members.max():.2f} % "
                    f"(best {named[best]}, lowest {named[worst]})")
    kinds = [kind for kind in runs.ENSEMBLE_KINDS if kind in ap.index]
    if kinds:
        said.append("the " + " and the ".join(f"{ENSEMBLE_NAMES[kind]} {ap[kind]:.2f} %" for kind in kinds))
    identity = [name for name in ap.index if name.startswith("i = j")]
    if identity:
        said.append(f"stage 1's i = j assumption {ap[identity[0]]:.2f} %")
    text = "; ".join(said) + "." if said else "No estimate was scored."
    if len(kinds) == 2:
        gap = ap[kinds[1]] - ap[kinds[0]]
        text += (f" The {ENSEMBLE_NAMES[kinds[1]]} is {abs(gap):.2f} points {'above' if gap > 0 else 'below'} the "
                 f"{ENSEMBLE_NAMES[kinds[0]]}" + (f" and {ap[kinds[1]] - members.max():+.2f} points from the best member".replace("-", "−")
                                      if len(members) else "") + ".")
    return text + (" Each figure is one estimate of this run's training split, with no seeds to spread over: a "
                   "ranking of these teachers, not a finding; notebook 04 asks whether the students it trains differ.")
