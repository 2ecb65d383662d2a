"""Stage configs: the single place where the papermill parameters are defined.

Each notebook's ``parameters`` cell holds flat literals whose names are exactly the fields of one
frozen dataclass below; the notebook's first code cell turns them into that dataclass, which
rejects unknown names and ill-typed values. Profiles (``salsa_lib.profiles``) are named sets of them.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, fields
from typing import Any, Mapping

from salsa_lib.errors import ConfigError

_TRUE, _FALSE = {"true", "yes", "1", "on"}, {"false", "no", "0", "off"}
# the rate every model consumes (method §2.2): PaSST's mel front end and pretrained weights are built for it
MODEL_SAMPLE_RATE = 32000


@dataclass(frozen=True)
class StageConfig:
    """Base class: type checks on construction, strict construction from parameter dicts."""

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in fields(self):
            value, expected = getattr(self, f.name), hints[f.name]
            if expected is float and isinstance(value, int) and not isinstance(value, bool):
                object.__setattr__(self, f.name, float(value))  # 3 is a fine float
            elif not _is_instance(value, expected):
                raise ConfigError(
                    f"{type(self).__name__}.{f.name} must be {_type_name(expected)}, got {value!r}"
                )
        self.validate()

    def validate(self) -> None:
        """Range checks of a concrete stage; raise ConfigError naming the field."""

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    @classmethod
    def from_params(cls, params: Mapping[str, Any]):
        unknown = sorted(set(params) - set(cls.field_names()))
        if unknown:
            raise ConfigError(
                f"unknown parameter(s) {unknown} for {cls.__name__}; valid: {cls.field_names()}"
            )
        return cls(**params)

    @classmethod
    def from_globals(cls, namespace: Mapping[str, Any]):
        """Build the config from a notebook's globals (the parameters cell plus papermill's)."""
        missing = [name for name in cls.field_names() if name not in namespace]
        if missing:
            raise ConfigError(f"the parameters cell does not define {missing} ({cls.__name__})")
        return cls(**{name: namespace[name] for name in cls.field_names()})

    def to_params(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes):
        return self.from_params({**self.to_params(), **changes})

    @classmethod
    def parse_value(cls, name: str, text: str) -> Any:
        """Turn a command-line string into the field's type (``-p seed 3`` gives the int 3)."""
        hints = typing.get_type_hints(cls)
        if name not in hints:
            raise ConfigError(f"unknown parameter {name!r} for {cls.__name__}")
        expected = hints[name]
        try:
            if expected is bool:
                lowered = text.strip().lower()
                if lowered not in _TRUE | _FALSE:
                    raise ValueError
                return lowered in _TRUE
            if expected in (int, float, str):
                return expected(text)
        except ValueError:
            raise ConfigError(f"{name}={text!r} is not a valid {_type_name(expected)}") from None
        raise ConfigError(f"{name} cannot be set from the command line ({_type_name(expected)})")


def _is_instance(value: Any, expected: Any) -> bool:
    if expected is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if expected in (float, str, bool):
        return isinstance(value, expected)
    return True  # compound annotations are not used as notebook parameters


def _type_name(expected: Any) -> str:
    return getattr(expected, "__name__", str(expected))


# --------------------------------------------------------------------------- stage configs


@dataclass(frozen=True)
class DataConfig(StageConfig):
    """Notebook 00: get the data (generate, download or point at your own) and cache its audio."""

    profile: str = "tiny"  # names the results folder: results/<profile>/
    dataset: str = "synthetic"  # synthetic (generated), clotho (ClothoV2.1 download), custom (yours), fake-clotho (dry run)
    data_root: str = ""  # empty: data/<dataset>; for custom: a folder in the ClothoV2 layout
    synthetic_seed: int = 0  # synthetic set generator seed
    n_train_clips: int = 250  # synthetic and fake-clotho: clips in development / validation / evaluation
    n_val_clips: int = 100
    n_test_clips: int = 100
    clip_seconds: float = 5.0  # synthetic only: clip duration
    source_sample_rate: int = 44100  # synthetic only: written like Clotho so resampling is exercised
    sample_rate: int = MODEL_SAMPLE_RATE  # every model consumes 32 kHz mono (method §2.2)
    skip_bad_clips: bool = False  # True: leave unreadable clips out and write a report instead of failing
    download: bool = True  # clotho only: fetch missing files (False: only use what is on disk)
    n_examples: int = 3  # clips shown with players and spectrograms

    def validate(self) -> None:
        if self.dataset not in DATASETS:
            raise ConfigError(f"dataset={self.dataset!r}; choose one of {sorted(DATASETS)}")
        if self.dataset == "custom" and not self.data_root:
            raise ConfigError("dataset='custom' needs data_root (a folder in the ClothoV2 layout)")
        for name in ("n_train_clips", "n_val_clips", "n_test_clips", "source_sample_rate"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if self.sample_rate != MODEL_SAMPLE_RATE:
            raise ConfigError(f"sample_rate={self.sample_rate}: the models take {MODEL_SAMPLE_RATE} Hz only "
                              f"(PaSST's mel front end and pretrained weights expect {MODEL_SAMPLE_RATE} Hz); "
                              f"leave sample_rate at {MODEL_SAMPLE_RATE}")
        if self.clip_seconds <= 0:
            raise ConfigError(f"clip_seconds must be positive, got {self.clip_seconds}")


DATASETS = {"synthetic", "clotho", "custom", "fake-clotho"}
ACCELERATORS = ("auto", "cpu", "gpu")
# Lightning's precision names, plus auto (salsa_lib.stages.precision chooses by the hardware)
PRECISIONS = ("auto", "32-true", "16-mixed", "bf16-mixed", "bf16-true", "16-true", "64-true")  # Lightning's names, for training and forward passes alike


def _check_accelerator(value: str) -> None:
    if value not in ACCELERATORS:
        raise ConfigError(f"accelerator={value!r}; choose one of {', '.join(ACCELERATORS)}")


@dataclass(frozen=True)
class TrainingConfig(StageConfig):
    """The training recipe shared by stages 1 and 2 (method §8): declared here once, inherited by both.

    The fields stay flat (papermill parameters); on the command line ``-p stage1.epochs 5`` sets one
    stage, and only the machine and run fields (``EVERY_STAGE_FIELDS``) may be given unqualified.
    """

    profile: str = "tiny"  # names the results folder: results/<profile>/
    batch_size: int = 32  # training batch; paper: 64
    eval_batch_size: int = 32  # validation forward passes during training
    epochs: int = 6  # paper: 20; both stages (stage 2 is the stage-1 recipe run again)
    warmup_epochs: float = 0.3  # linear warmup (per step); paper: 1 of 20, the proportion kept here
    rampdown_start: float = 0.3  # cosine from lr to min_lr between these epochs, then constant; paper: 1
    rampdown_stop: float = 4.5  # paper: 15 of 20; the last quarter trains at min_lr, as in the paper
    lr_audio_encoder: float = 5e-4  # paper: 2e-5 for all four groups; a random-init PaSST needs more
    lr_text_encoder: float = 5e-5
    lr_audio_projection: float = 1e-3
    lr_text_projection: float = 1e-3
    min_lr: float = 1e-7
    weight_decay: float = 0.0
    precision: str = "auto"  # auto: 16-mixed on a GPU (paper), bf16-mixed on a CPU with native bf16, else 32-true
    accelerator: str = "auto"  # cpu, gpu, auto
    devices: int = 1  # GPUs (or CPU processes) per node, DDP when > 1
    strategy: str = "auto"  # Lightning strategy; ddp_notebook runs DDP inside a notebook kernel
    num_nodes: int = 1
    accumulate_grad_batches: int = 1
    num_workers: int = 0  # DataLoader workers
    resume: bool = True  # continue from last.ckpt when a run was interrupted
    parallel_runs: int = 0  # independent runs (members, students) at once on a CPU; 0: one per core, 1: one at a time
    spectrogram_cache_gb: float = 2.0  # store the clips' STFTs once when they fit (0: STFT every step, as ClothoV2 needs)

    def validate(self) -> None:
        for name in ("batch_size", "eval_batch_size", "epochs", "devices", "num_nodes", "accumulate_grad_batches"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("lr_audio_encoder", "lr_text_encoder", "lr_audio_projection", "lr_text_projection", "min_lr"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if not 0 <= self.warmup_epochs <= self.rampdown_start < self.rampdown_stop:
            raise ConfigError("need 0 <= warmup_epochs <= rampdown_start < rampdown_stop, got "
                              f"{self.warmup_epochs}, {self.rampdown_start}, {self.rampdown_stop}")
        if min(self.num_workers, self.weight_decay, self.spectrogram_cache_gb, self.parallel_runs) < 0:
            raise ConfigError("num_workers, weight_decay, spectrogram_cache_gb and parallel_runs must be >= 0")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision={self.precision!r}; choose one of {', '.join(PRECISIONS)}")


# Fields that mean the same thing in every stage that has them (the machine and the run, not the
# method): the only names ``-p`` accepts without a stage qualifier when several stages define them.
EVERY_STAGE_FIELDS = frozenset({"precision", "accelerator", "devices", "strategy", "num_nodes", "num_workers",
                                "resume", "spectrogram_cache_gb", "parallel_runs"})


# the audio encoders built small and trained from scratch here (salsa_lib.core builds them), which a tagging
# pool can pretrain: the small PaSST (the students' kind), then the other families of a mixed ensemble
SMALL_AUDIO_ENCODERS = ("passt_small", "mobilenet_small", "frames_small")


@dataclass(frozen=True)
class Stage1Config(TrainingConfig):
    """Notebook 01: train K dual encoders with the contrastive loss (method §3–6, §8)."""

    members: int = 1  # ensemble members of audio_encoder (students start from these); member k trains with seed + k
    other_members: str = "mobilenet_small,frames_small"  # comma list: one more member of each other family (mixed ensemble); empty: none
    seed: int = 409194  # the README's stage-1 seed
    audio_encoder: str = "passt_small"  # passt_small (random init) or passt_s_p16_s16_128_ap468 (paper); also mobilenet_small, frames_small
    pretrained_audio: bool = False  # True: the paper's AudioSet weights via hear21passt (network once); False: random init, pretrained here when pretrain_clips > 0
    passt_width: int = 192  # the small encoders: embedding width, layers, heads (the other families follow them)
    passt_depth: int = 2
    passt_heads: int = 3
    pretrain_clips: int = 800  # the small encoders: tagging pool for their pretraining (AudioSet stand-in); 0: none
    pretrain_epochs: int = 12  # passes over the tagging pool
    pretrain_lr: float = 3e-4  # AdamW for the encoder (the new tagging head: 30 times more), warm-up epoch, cosine to 0
    text_encoder: str = "packaged-minilm"  # a transformers name or folder; paper: roberta-large
    text_trainable_layers: int = 2  # top layers that train (-1: all, the paper); tiny: 2 of 6 to fit the CPU budget
    text_max_length: int = 32  # tokens (method §4)
    text_dropout: float = 0.2  # hidden and attention dropout (method §4)
    text_step_cache: bool = True  # training: the frozen text layers' outputs computed once, without their dropout
    embed_dim: int = 1024  # shared space (method §5)
    tau: float = 0.05  # fixed temperature (method §5)
    train_seconds: float = 5.0  # random crop / zero pad in training; paper: 30
    eval_seconds: float = 5.0  # zero pad at evaluation; paper: 30
    window_seconds: float = 5.0  # PaSST window; paper: 10 (three windows per 30 s clip)

    def validate(self) -> None:
        super().validate()
        for name in ("members", "passt_width", "passt_depth", "passt_heads", "embed_dim"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("tau", "train_seconds", "eval_seconds", "window_seconds"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if not 0 <= self.text_dropout < 1:
            raise ConfigError(f"text_dropout must be in [0, 1), got {self.text_dropout}")
        if self.pretrain_clips < 0 or self.pretrain_epochs < 0 or self.pretrain_lr <= 0:
            raise ConfigError("need pretrain_clips >= 0, pretrain_epochs >= 0 and pretrain_lr > 0, got "
                              f"{self.pretrain_clips}, {self.pretrain_epochs}, {self.pretrain_lr}")
        if self.pretrain_clips and self.audio_encoder not in SMALL_AUDIO_ENCODERS:
            raise ConfigError(f"pretrain_clips={self.pretrain_clips} pretrains the small encoders only "
                              f"({', '.join(SMALL_AUDIO_ENCODERS)}); {self.audio_encoder!r} has its own weights: "
                              "set pretrain_clips 0")

    @property
    def other_families(self) -> list[str]:
        return [name.strip() for name in self.other_members.split(",") if name.strip()]


@dataclass(frozen=True)
class CorrespondenceConfig(StageConfig):
    """Notebook 02: embed the training split with every stage-1 member, estimate correspondences (method §7.1–7.2)."""

    profile: str = "tiny"
    embed_batch_size: int = 32  # clips or captions per forward pass while embedding (no training batch)
    accelerator: str = "auto"  # as in training: auto (a GPU when there is one), cpu or gpu
    block_size: int = 2048  # captions per block of the full-split estimate (bounds memory)
    n_example_queries: int = 3  # captions whose estimated correspondences are plotted
    top_k: int = 50  # clips shown per example query, ranked by the estimate

    def validate(self) -> None:
        for name in ("embed_batch_size", "block_size", "n_example_queries", "top_k"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        _check_accelerator(self.accelerator)


@dataclass(frozen=True)
class Stage2Config(TrainingConfig):
    """Notebook 03: distil the estimated correspondences into a stage-1 model (method §7.3, §8)."""

    teachers: str = "self,mixed,control"  # comma list of self, ensemble (same architecture), mixed (every family), truth (known correspondences), control (L_sup only)
    students: int = 3  # student k starts from stage-1 member k (mod members) with seed + k: paired across teachers
    sup_weight: float = 0.0  # weight of L_sup; the paper's recipe: 0
    distill_weight: float = 1.0  # weight of L_dist; the paper's recipe: 1
    seed: int = 523528930  # the README's stage-2 seed

    def validate(self) -> None:
        super().validate()
        kinds = self.teacher_kinds
        unknown = sorted(set(kinds) - set(TEACHER_KINDS))
        if unknown or not kinds or len(set(kinds)) != len(kinds):
            raise ConfigError(f"teachers={self.teachers!r}; give distinct names, comma-separated, of {TEACHER_KINDS}")
        if self.students < 1:
            raise ConfigError(f"students must be >= 1, got {self.students}")
        if self.sup_weight < 0 or self.distill_weight < 0 or self.sup_weight + self.distill_weight == 0:
            raise ConfigError(f"need non-negative loss weights, not both zero: sup_weight={self.sup_weight}, "
                              f"distill_weight={self.distill_weight}")

    @property
    def teacher_kinds(self) -> list[str]:
        return [kind.strip() for kind in self.teachers.split(",") if kind.strip()]


# stage 2's teachers: the stage-1 members of the student's architecture, the members of every family,
# the initial member alone, the synthetic set's true correspondences (the method's ceiling), or none
# (L_sup only for as many epochs: the control)
TEACHER_KINDS = ("ensemble", "mixed", "self", "truth", "control")


@dataclass(frozen=True)
class EvaluationConfig(StageConfig):
    """Notebook 04: evaluate every trained model on the test split (method §9, §10)."""

    profile: str = "tiny"
    split: str = "test"  # test (ClothoV2 evaluation) or val
    embed_batch_size: int = 32  # clips or captions per forward pass (no training batch)
    accelerator: str = "auto"  # as in training: auto (a GPU when there is one), cpu or gpu
    n_example_queries: int = 4  # queries shown with their top results
    top_k: int = 5  # results shown per example query
    released_checkpoint: str = ""  # path of the released passt_roberta.ckpt under the project root; empty: skip
    trust_released_pickle: bool = False  # True: unpickle it fully (weights_only off); trusted source only

    def validate(self) -> None:
        if self.split not in ("test", "val"):
            raise ConfigError(f"split={self.split!r}; choose test or val")
        _check_accelerator(self.accelerator)
        for name in ("embed_batch_size", "n_example_queries", "top_k"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")


@dataclass(frozen=True)
class DemoConfig(StageConfig):
    """Notebook 05: type a query, listen to the top results (headless: runs example queries)."""

    profile: str = "tiny"
    model: str = ""  # a name from the model menu; empty: the SALSA student with the best validation mAP@10
    audio_dir: str = ""  # an extra folder of sounds to search besides the test split
    top_k: int = 5  # results per query
    queries: str = ""  # example queries separated by semicolons; empty: captions of test clips
    n_example_queries: int = 3

    def validate(self) -> None:
        if self.top_k < 1 or self.n_example_queries < 1:
            raise ConfigError(f"top_k and n_example_queries must be >= 1, got {self.top_k}, {self.n_example_queries}")
