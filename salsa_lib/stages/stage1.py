"""Stage 1: train the ensemble members, each in its own folder under results/<profile>/stage1/.

Members 0..members-1 have the configured audio encoder (the students' architecture); then one member
of each family in ``other_members`` (a mixed ensemble, as the original README advises), trained with
the same recipe and text encoder. Member k trains with seed + k. Reuse, resume and move-aside rules:
``run_folders.train_or_reuse``.
"""

from __future__ import annotations

import lightning.pytorch as pl
import pandas as pd

from salsa_lib import reports, runs
from salsa_lib.config import SMALL_AUDIO_ENCODERS, DataConfig, Stage1Config
from salsa_lib.core.audio_families import SMALL_FRAMES
from salsa_lib.data import data_sources
from salsa_lib.data.splits import split_fingerprint
from salsa_lib.errors import ConfigError
from salsa_lib.files import atomic_write_json
from salsa_lib.stages import parallel_runs, precision, pretraining
from salsa_lib.stages.run_folders import announce_finished, train_or_reuse
from salsa_lib.stages.training import RetrievalModule, fit, make_loaders


# Families whose runs are dispatched to the workers first, so that the longest run never trains alone
# at the end: the frame transformer's pretraining took longest in the study (131 s against 99 s for
# the MobileNet-style CNN and 87 s for the small PaSST; ``pretraining`` in
# results/benchmarks/study/study.json: 2-core AMD EPYC with native bf16, run in fp32). The other two
# are close, so they keep their order. The order changes no result beyond float rounding
# (``parallel_runs.thread_plan``).
LONGEST_FIRST = (SMALL_FRAMES,)


def longest_first(families: list[str]) -> list[int]:
    """Positions of ``families`` in dispatch order: ``LONGEST_FIRST``'s, then the others, ties as given."""
    rank = {family: k for k, family in enumerate(LONGEST_FIRST)}
    return sorted(range(len(families)), key=lambda k: rank.get(families[k], len(rank)))


def train_members(config: Stage1Config, data: DataConfig, progress: bool = True, force: bool = False,
                  pretrained: dict[str, dict] | None = None) -> pd.DataFrame:
    """Train (or reuse; ``force``: retrain) every member; returns and writes the members table.

    ``pretrained``: audio encoder -> pretraining record, for the families the caller has already pretrained
    (``pretrain_families``' answer); the others are made or reused here. With ``force`` a family is
    retrained here unless its record is given: notebook 01 passes every family it pretrained.
    """
    plan = member_configs(config)  # refuses an unknown family before anything trains
    data_sources.load_splits(data, splits=("train", "val"), progress=progress)  # audio caches built once, here
    starts = pretrain_families(config, data, progress, force, pretrained)  # audio encoder -> its pretraining record
    workers, threads, _ = worker_plan = parallel_runs.plan_workers(config, len(plan))
    if progress:
        precision.announce(config.precision, config.accelerator)
        print(parallel_runs.describe(worker_plan, len(plan), "members"), flush=True)
    jobs = [(member_config, data, k, progress and workers == 1, starts.get(member_config.audio_encoder), force)
            for k, member_config in enumerate(plan)]
    records = parallel_runs.run_all(_member_job, jobs, workers, threads, announce_finished if progress and workers > 1 else None,
                                    order=longest_first([c.audio_encoder for c in plan]))
    atomic_write_json(runs.stage1_dir(config.profile) / runs.MEMBERS_LISTING,
                      {"members": [r["folder"] for r in records], "params": config.to_params()})
    table = pd.DataFrame([{"member": k, "audio_encoder": r["run"]["audio_encoder"], "seed": r["run"]["seed"],
                           "best_epoch": r["best_epoch"], **r["val"], "seconds": r["seconds"]}
                          for k, r in enumerate(records)])
    reports.write_table(table, config.profile, "stage1_members")
    return table


def pretrain_families(config: Stage1Config, data: DataConfig, progress: bool = True, force: bool = False,
                      given: dict | None = None) -> dict[str, dict]:
    """Each member family's pretraining record, made or reused (``given``: records the caller has);
    empty where the profile does not pretrain (``pretrain_clips = 0``)."""
    if not config.pretrain_clips:
        return {}
    families = {c.audio_encoder: c for c in member_configs(config) if c.audio_encoder not in (given or {})}
    if families:  # generated once, here, so that no two workers generate it at the same time
        pretraining.ensure_pool(config.pretrain_clips, config.window_seconds, data.synthetic_seed, progress)
    # side by side on the cores, as the members are (two one-thread runs get more done than one run on
    # two threads: ``parallel_runs``), the longest first
    workers, threads, _ = worker_plan = parallel_runs.plan_workers(config, len(families))
    if progress and workers > 1:
        print(parallel_runs.describe(worker_plan, len(families), "pretraining runs"), flush=True)
    jobs = [(family_config, data, progress and workers == 1, force) for family_config in families.values()]
    records = parallel_runs.run_all(pretraining.pretrain_or_reuse, jobs, workers, threads,
                                    _announce_pretrained if progress and workers > 1 else None,
                                    order=longest_first(list(families)))
    return {**(given or {}), **dict(zip(families, records))}


def _announce_pretrained(record: dict) -> None:
    """A worker's pretraining, when it finishes: its family, held-out tag mAP and time."""
    print(f"pretrained {record['params']['audio_encoder']}: held-out tag mAP {record['before']['tag mAP']:.3f} -> "
          f"{record['after']['tag mAP']:.3f} in {record['seconds']:.0f} s", flush=True)


def member_configs(config: Stage1Config) -> list[Stage1Config]:
    """Member k's config: ``members`` of ``audio_encoder``, then one of each ``other_members`` family.

    A member's config names no other member (``other_members`` empty), so adding a family never
    retrains the members already there.
    """
    families = config.other_families
    unknown = [f for f in families if f not in SMALL_AUDIO_ENCODERS or f == config.audio_encoder]
    if unknown:
        raise ConfigError(f"other_members={config.other_members!r}: {unknown} is not another small audio-encoder "
                          f"family; choose from {[f for f in SMALL_AUDIO_ENCODERS if f != config.audio_encoder]}")
    own = config.replace(other_members="")
    return [own] * config.members + [own.replace(audio_encoder=family) for family in families]


def _member_job(config: Stage1Config, data: DataConfig, member: int, progress: bool, pretrained: dict | None,
                force: bool) -> dict:
    """One member from the data config alone: what a worker process of ``parallel_runs`` runs."""
    splits = data_sources.load_splits(data, splits=("train", "val"), progress=False)
    return train_member(config, member, splits["train"], splits["val"], progress, pretrained, force)


def train_member(config: Stage1Config, member: int, train, val, progress: bool = True,
                 pretrained: dict | None = None, force: bool = False) -> dict:
    """``pretrained``: the record of ``pretraining.pretrain_or_reuse``, whose weights start the PaSST."""
    params = {**config.to_params(), "seed": config.seed + member}
    # the data are part of the run's identity: a regenerated data set must not reuse old members;
    # how many runs shared the machine is not (it changes no result beyond rounding)
    # as is the precision it trains in (auto resolved here, so another machine never reuses it as its own)
    run = {**precision.as_trained(runs.identity(params)),
           "data": {"train": split_fingerprint(train), "val": split_fingerprint(val)}}
    if pretrained is not None:  # and so are the pretrained weights it starts from
        run["pretrained_audio_sha256"] = pretrained["checkpoint_sha256"]

    def fit_run() -> dict:
        pl.seed_everything(params["seed"], workers=True, verbose=False)
        member_config = Stage1Config.from_params(params)
        train_set, train_loader, val_loader = make_loaders(member_config, train, val)
        module = RetrievalModule(params, steps_per_epoch=len(train_loader), run=run)
        if pretrained is not None:
            pretraining.load_pretrained(module.model.audio_encoder.trunk, config.profile, pretrained)
        module.val_captions = val.captions
        return fit(module, runs.member_dir(config.profile, member), train_set, train_loader, val_loader, progress)

    return train_or_reuse(runs.member_dir(config.profile, member), run, fit_run, force)
