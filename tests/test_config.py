"""Stage configs and profiles: type checks, each value declared once, unambiguous overrides."""

import pytest

from salsa_lib import runner
from salsa_lib.config import EVERY_STAGE_FIELDS, DataConfig, Stage1Config, Stage2Config, TrainingConfig
from salsa_lib.profiles import PROFILES, Profile, get_profile
from salsa_lib.errors import ConfigError


def test_ill_typed_unknown_and_out_of_range_values_are_refused_by_name():
    with pytest.raises(ConfigError, match="Stage1Config.epochs must be int, got '3'"):
        Stage1Config(epochs="3")
    with pytest.raises(ConfigError, match="unknown parameter.*'epoch'"):
        Stage1Config.from_params({"epoch": 3})
    with pytest.raises(ConfigError, match="batch_size must be >= 1"):
        Stage2Config(batch_size=0)
    with pytest.raises(ConfigError, match="teachers='nobody'"):
        Stage2Config(teachers="nobody")
    assert Stage1Config(tau=1).tau == 1.0 and isinstance(Stage1Config(tau=1).tau, float)  # an int is a fine float


def test_sample_rate_other_than_the_models_is_refused_with_the_reason():
    for make in (lambda: DataConfig(sample_rate=16000), lambda: DataConfig.from_params({"sample_rate": 16000})):
        with pytest.raises(ConfigError, match="sample_rate=16000.*32000.*PaSST") as info:
            make()
        assert "sample_rate" in str(info.value) and "32000" in str(info.value)
    assert DataConfig().sample_rate == 32000


def test_command_line_values_are_parsed_to_the_field_type():
    assert Stage1Config.parse_value("epochs", "7") == 7
    assert Stage1Config.parse_value("resume", "No") is False
    with pytest.raises(ConfigError, match="resume='maybe' is not a valid bool"):
        Stage1Config.parse_value("resume", "maybe")


def test_training_recipe_is_declared_once_for_both_stages():
    shared = set(TrainingConfig.field_names())
    assert shared <= set(Stage1Config.field_names()) and shared <= set(Stage2Config.field_names())
    own = lambda cls: {name for name in cls.__dataclass_fields__ if name in cls.__annotations__}
    assert not own(Stage1Config) & shared and not own(Stage2Config) & shared  # no re-declaration
    # the training rules apply to stage 2 too, through the base class
    with pytest.raises(ConfigError, match="warmup_epochs <= rampdown_start"):
        Stage2Config(warmup_epochs=2.0, rampdown_start=1.0)


def test_profile_name_is_given_once_and_checked():
    for name, profile in PROFILES.items():
        assert {config.profile for config in profile.stage_configs().values()} == {name}
    tiny = get_profile("tiny")
    with pytest.raises(ConfigError, match="name another profile.*'stage2': 'tiny'"):
        Profile(name="mine", description="", data=DataConfig(profile="mine"),
                **{stage: getattr(tiny, stage).replace(profile="mine") for stage in
                   ("stage1", "correspondences", "evaluation", "demo")}, stage2=tiny.stage2)
    with pytest.raises(ConfigError, match="unknown stage"):
        Profile.build("x", "", stage3=dict(epochs=1))


def test_every_profile_runs_stage_2_with_the_stage_1_recipe():
    """The paper's stage 2 is its stage-1 recipe run again: same epochs, schedule, learning rates, batch."""
    for profile in PROFILES.values():
        for name in TrainingConfig.field_names():
            if name != "profile":
                assert getattr(profile.stage1, name) == getattr(profile.stage2, name), (profile.name, name)
    tiny = get_profile("tiny").stage1  # the paper's 1 / 15 / 20 epochs, in proportion
    proportions = [value / tiny.epochs for value in (tiny.warmup_epochs, tiny.rampdown_start, tiny.rampdown_stop)]
    assert proportions == pytest.approx([1 / 20, 1 / 20, 15 / 20])


def test_paper_recipe_is_identical_in_both_training_stages():
    clotho = get_profile("clotho")
    assert (clotho.stage1.batch_size, clotho.stage1.epochs, clotho.stage1.lr_text_encoder) == (64, 20, 2e-5)
    assert (clotho.stage1.seed, clotho.stage2.seed) == (409194, 523528930)


def test_ambiguous_override_is_refused_with_the_stages_that_define_it():
    with pytest.raises(ConfigError, match=r"-p batch_size is ambiguous.*'stage1'.*'stage2'.*-p stage1.batch_size"):
        runner.plan("tiny", {"batch_size": "8"})
    with pytest.raises(ConfigError, match=r"-p seed is ambiguous.*-p stage2.seed"):
        runner.plan("tiny", {"seed": "3"})


def test_qualified_override_sets_one_stage_only():
    steps = {s.name[:2]: s.config for s in runner.plan("tiny", {"stage1.batch_size": "8", "stage2.seed": "4"})}
    assert steps["01"].batch_size == 8 and steps["03"].batch_size == PROFILES["tiny"].stage2.batch_size
    assert steps["03"].seed == 4 and steps["01"].seed == PROFILES["tiny"].stage1.seed
    with pytest.raises(ConfigError, match="stage1 has no parameter 'teachers'"):
        runner.plan("tiny", {"stage1.teachers": "self"})
    with pytest.raises(ConfigError, match="unknown stage 'stage3'"):
        runner.plan("tiny", {"stage3.seed": "1"})


def test_hardware_fields_and_single_stage_names_need_no_qualifier():
    steps = {s.name[:2]: s.config for s in runner.plan("tiny", {"precision": "bf16-mixed", "n_train_clips": "9"})}
    assert steps["01"].precision == steps["03"].precision == "bf16-mixed"
    assert steps["00"].n_train_clips == 9
    assert "precision" in EVERY_STAGE_FIELDS and "seed" not in EVERY_STAGE_FIELDS
