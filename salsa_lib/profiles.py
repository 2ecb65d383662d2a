"""Profiles: one named set of stage configs per way of running the pipeline (tiny, clotho, ...).

Each stage's config class (``salsa_lib.config``) holds the defaults; a profile changes only what
differs, with its name given once. ``NOTEBOOK_STAGES`` maps each numbered notebook to its stage.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from salsa_lib.config import (
    CorrespondenceConfig,
    DataConfig,
    DemoConfig,
    EvaluationConfig,
    Stage1Config,
    Stage2Config,
    StageConfig,
    TEACHER_KINDS,
)
from salsa_lib.errors import ConfigError

STAGE_CONFIGS: dict[str, type[StageConfig]] = {
    "data": DataConfig, "stage1": Stage1Config, "correspondences": CorrespondenceConfig,
    "stage2": Stage2Config, "evaluation": EvaluationConfig, "demo": DemoConfig,
}
# notebook file stem prefix -> the stage (a key of STAGE_CONFIGS) holding that notebook's config
NOTEBOOK_STAGES = {"00": "data", "01": "stage1", "02": "correspondences", "03": "stage2", "04": "evaluation", "05": "demo"}
# Stages that reuse cached results: their notebooks take a ``force`` parameter besides the config's
# fields, which ``run_all.sh --force`` sets to recompute instead of reuse. Not a config field: it says
# how to run, not what to compute, so it belongs to no run's identity (records, step keys).
FORCE_STAGES = ("stage1", "correspondences", "stage2")


@dataclass(frozen=True)
class Profile:
    """A named set of stage configs, one per notebook; every config carries the profile's name."""

    name: str
    description: str
    data: DataConfig
    stage1: Stage1Config
    correspondences: CorrespondenceConfig
    stage2: Stage2Config
    evaluation: EvaluationConfig
    demo: DemoConfig

    def __post_init__(self) -> None:
        wrong = {stage: config.profile for stage, config in self.stage_configs().items() if config.profile != self.name}
        if wrong:
            raise ConfigError(f"profile {self.name!r}: stage configs name another profile: {wrong}")

    @classmethod
    def build(cls, name: str, description: str, **stage_params: Mapping[str, Any]) -> "Profile":
        """The profile whose stage configs are the defaults changed by ``stage_params[stage]``."""
        unknown = sorted(set(stage_params) - set(STAGE_CONFIGS))
        if unknown:
            raise ConfigError(f"unknown stage(s) {unknown}; stages are {list(STAGE_CONFIGS)}")
        configs = {stage: config_class.from_params({**stage_params.get(stage, {}), "profile": name})
                   for stage, config_class in STAGE_CONFIGS.items()}
        return cls(name=name, description=description, **configs)

    def stage_configs(self) -> dict[str, StageConfig]:
        return {stage: getattr(self, stage) for stage in STAGE_CONFIGS}

    def derive(self, name: str, description: str, changes: Mapping[str, Mapping[str, Any]]) -> "Profile":
        """This profile with ``changes`` (stage -> field -> value) and its own results folder; the recipe is not repeated."""
        unknown = sorted(set(changes) - set(STAGE_CONFIGS))
        if unknown:
            raise ConfigError(f"{self.name}.derive({name!r}): unknown stage(s) {unknown}")
        stages = {stage: config.replace(**{**changes.get(stage, {}), "profile": name})
                  for stage, config in self.stage_configs().items()}
        return Profile(name=name, description=description, **stages)


# The README recipe of the original work (method §8), for both training stages
PAPER_TRAINING = dict(
    batch_size=64, eval_batch_size=32, epochs=20, warmup_epochs=1.0, rampdown_start=1.0, rampdown_stop=15.0,
    lr_audio_encoder=2e-5, lr_text_encoder=2e-5, lr_audio_projection=2e-5, lr_text_projection=2e-5,
    precision="16-mixed", accelerator="gpu", num_workers=8,
)


_CLOTHO = Profile.build(
    "clotho", "the paper: ClothoV2, pretrained PaSST, roberta-large; needs a GPU and network",
    data=dict(dataset="clotho"),
    stage1=dict(  # one member, seed 409194, PaSST-S (AudioSet) + roberta-large, 30 s as 3 x 10 s
        PAPER_TRAINING, members=1, seed=409194, audio_encoder="passt_s_p16_s16_128_ap468",
        pretrained_audio=True, pretrain_clips=0, other_members="", text_encoder="roberta-large", text_trainable_layers=-1,
        train_seconds=30.0, eval_seconds=30.0, window_seconds=10.0,
    ),
    correspondences=dict(embed_batch_size=64, accelerator="gpu"),
    stage2=dict(  # self-distillation, L_dist only, seed 523528930
        PAPER_TRAINING, teachers="self", students=1, sup_weight=0.0, distill_weight=1.0, seed=523528930,
    ),
    evaluation=dict(embed_batch_size=64, accelerator="gpu", released_checkpoint="data/checkpoints/passt_roberta.ckpt"),
)

# The paper profile's code path and architectures on a CPU, offline, in minutes. What differs, and why:
# - data: a generated ClothoV2.1-shaped release (archives, CSVs, md5s; 15-30 s clips at 44.1 kHz),
#   installed by the ClothoV2 download code; 2/2/3 clips, so an epoch is 5 optimizer steps (10 pairs, batch 2;
#   notebook 02 draws a batch of 8 training captions, so 2 clips is the least it takes)
# - weights: PaSST-S p16/s16 and a roberta-large-shaped encoder (24 layers, 1024 wide) with random
#   weights (no download; the packaged MiniLM's tokenizer); 1 epoch per stage
# - batch size, precision, device and step cache (the only other differences): batch 2 fits a CPU's
#   memory, precision auto picks the CPU's rule (bf16 autocast where it is native, else fp32; fp16 AMP
#   needs a GPU), everything on the CPU with the data loaded in the main process (num_workers 0: two
#   cores, and no forked copies of a 10 GB process), and no stored spectrograms: ClothoV2's would
#   not fit the cache, so the paper runs the STFT in every step, and so must its dry run
DRYRUN_DATA = {"dataset": "fake-clotho", "n_train_clips": 2, "n_val_clips": 2, "n_test_clips": 3}
DRYRUN_MODEL = {"pretrained_audio": False, "text_encoder": "random-roberta-large", "epochs": 1}
DRYRUN_HARDWARE = {"batch_size": 2, "eval_batch_size": 2, "precision": "auto", "accelerator": "cpu",
                   "num_workers": 0, "spectrogram_cache_gb": 0.0}
DRYRUN_CHANGES = {
    "data": DRYRUN_DATA,
    "stage1": {**DRYRUN_MODEL, **DRYRUN_HARDWARE},
    "correspondences": {"embed_batch_size": 2, "accelerator": "cpu"},
    "stage2": {"epochs": 1, **DRYRUN_HARDWARE},
    "evaluation": {"embed_batch_size": 2, "accelerator": "cpu"},
}

# paired students per kind of the study: the t interval of a paired difference shrinks with its spread
# over sqrt(n); at the default run's spread of truth - control (1.27 points over 3 students) 8 students
# give a 95 % interval of +-1.06 points, at 1.0 points +-0.84
STUDY_STUDENTS = 8

PROFILES: dict[str, Profile] = {
    "tiny": Profile.build(  # both stages train with the configs' defaults: one recipe, declared once
        "tiny", "synthetic benchmark, small PaSST pretrained on tagging, packaged MiniLM; 2-core CPU in minutes "
                "(one member per family, every student starts from the PaSST member)",
    ),
    "tiny-grid": Profile.build(  # the tiny profile with every stage-2 teacher kind, in its own folder
        "tiny-grid", "the tiny profile with every stage-2 teacher kind: the full grid of the verdict table; "
                     "one PaSST member per student, so the same-architecture ensemble has three",
        stage1={"members": 3}, stage2={"teachers": ",".join(TEACHER_KINDS)},
    ),
    "tiny-study": Profile.build(  # the tiny recipe with enough paired students to tell a difference
        "tiny-study", f"the tiny recipe with {STUDY_STUDENTS} paired students per kind (self, mixed, truth, "
                      "control): the verdict with intervals narrow enough to decide; 75 minutes on 2 cores (fp32) as last timed",
        stage1={"members": STUDY_STUDENTS}, stage2={"teachers": "self,mixed,truth,control", "students": STUDY_STUDENTS},
    ),
    "clotho": _CLOTHO,
    "clotho-dryrun": _CLOTHO.derive(
        "clotho-dryrun",
        "the clotho profile's code path and architectures on a fake ClothoV2, random weights, CPU; "
        "differs from clotho only in data, weights, epochs, batch size, precision and device",
        DRYRUN_CHANGES),
}


# ``-p`` overrides that shrink the tiny profile to about a minute (tests and the quick benchmark)
_MINIATURE_TRAINING = dict(batch_size=10, eval_batch_size=4, epochs=1, warmup_epochs=0.5, rampdown_start=0.5,
                           rampdown_stop=1.0)
MINIATURE_OVERRIDES: dict[str, object] = {
    "n_train_clips": 8, "n_val_clips": 4, "n_test_clips": 4, "clip_seconds": 1.0, "source_sample_rate": 16000,
    "members": 2, "passt_width": 64, "passt_depth": 1, "passt_heads": 2, "text_trainable_layers": 1,
    "embed_dim": 32, "train_seconds": 1.0, "eval_seconds": 1.0, "window_seconds": 1.0,
    **{f"{stage}.{name}": value for stage in ("stage1", "stage2") for name, value in _MINIATURE_TRAINING.items()},
    "correspondences.embed_batch_size": 10, "evaluation.embed_batch_size": 10,
    "pretrain_clips": 12, "pretrain_epochs": 1, "stage2.students": 1,  # every teacher kind, one student each
}


def get_profile(name: str) -> Profile:
    if name not in PROFILES:
        raise ConfigError(f"unknown profile {name!r}; choose one of {sorted(PROFILES)}")
    return PROFILES[name]
