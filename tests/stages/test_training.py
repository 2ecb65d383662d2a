"""The learning-rate schedule of method §8, in closed form and as the optimiser applies it; steps
and validations whose numbers are not finite; and training that learns, on data where learning is certain."""

import math

import numpy as np
import pandas as pd
import pytest
import torch

from salsa_lib import runs
from salsa_lib.config import MODEL_SAMPLE_RATE, Stage1Config
from salsa_lib.core.metrics import chance_map_at_k, text_to_audio_metrics
from salsa_lib.data import data_sources
from salsa_lib.data.splits import CAPTIONS_PER_CLIP, caption_clips
from salsa_lib.errors import ConfigError, DataError, NonFiniteError
from salsa_lib.stages import precision, run_folders
from salsa_lib.stages.step_cache import StepCache
from salsa_lib.stages.training import RetrievalModule, learning_rate, manual_step

PAPER = Stage1Config(epochs=20, warmup_epochs=1.0, rampdown_start=1.0, rampdown_stop=15.0, min_lr=1e-7)


@pytest.mark.parametrize("epoch, expected", [
    (0.0, 0.0),
    (0.25, 0.25 * 2e-5),  # linear warm-up over the first epoch
    (1.0, 2e-5),  # peak
    (8.0, 1e-7 + (2e-5 - 1e-7) * 0.5),  # half way down the cosine: cos(pi/2) = 0
    (4.5, 1e-7 + (2e-5 - 1e-7) * 0.5 * (1 + math.cos(math.pi * 3.5 / 14))),
    (15.0, 1e-7),  # floor from epoch 15 on
    (19.9, 1e-7),
])
def test_paper_schedule_values(epoch, expected):
    assert learning_rate(epoch, 2e-5, PAPER) == pytest.approx(expected, rel=1e-9, abs=1e-15)


def test_schedule_is_monotone_after_warmup():
    values = [learning_rate(1 + k / 10, 2e-5, PAPER) for k in range(141)]
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_optimizer_follows_the_schedule_per_step(tiny_stage1):
    from salsa_lib.stages.training import RetrievalModule

    config = tiny_stage1.replace(epochs=4, warmup_epochs=1.0, rampdown_start=1.0, rampdown_stop=3.0,
                                 lr_audio_encoder=1e-3, lr_text_projection=4e-3)
    module = RetrievalModule(config.to_params(), steps_per_epoch=10)
    setup = module.configure_optimizers()
    optimizer, scheduler = setup["optimizer"], setup["lr_scheduler"]["scheduler"]
    by_name = {g["name"]: g for g in optimizer.param_groups}
    seen = {}
    for step in range(40):
        seen[step] = (by_name["audio_encoder"]["lr"], by_name["text_projection"]["lr"])
        optimizer.step()
        scheduler.step()
    assert seen[5] == pytest.approx((0.5e-3, 2e-3))  # half-way through warm-up (epoch 0.5)
    assert seen[10] == pytest.approx((1e-3, 4e-3))  # peak at epoch 1
    assert seen[20][0] == pytest.approx(1e-7 + (1e-3 - 1e-7) * 0.5)  # cosine midpoint at epoch 2
    assert seen[35] == pytest.approx((1e-7, 1e-7))  # floor


@pytest.mark.parametrize("change, message", [
    ({"batch_size": 0}, "batch_size"),
    ({"tau": -0.05}, "tau"),
    ({"text_dropout": 1.0}, "text_dropout"),
    ({"rampdown_start": 5.0, "rampdown_stop": 2.0}, "rampdown"),
    ({"lr_text_encoder": "fast"}, "lr_text_encoder"),
])
def test_invalid_hyperparameters_are_named(change, message):
    with pytest.raises(ConfigError, match=message):
        Stage1Config(**change)


def test_runs_set_aside_are_never_deleted(tmp_path):
    """Three runs of one folder with changing parameters: the two earlier ones stay, numbered in order."""
    folder = tmp_path / "stage1" / "member0"

    def train_writing(marker: str):
        def train() -> dict:
            (folder / "checkpoints").mkdir(parents=True)
            (folder / "checkpoints" / "best.ckpt").write_text(marker)
            return {}
        return train

    for k in range(3):
        run_folders.train_or_reuse(folder, {"lr": k}, train_writing(f"run {k}"))
    previous = tmp_path / "stage1" / ".previous"
    assert sorted(p.name for p in previous.iterdir()) == ["member0-1", "member0-2"]
    assert [(previous / f"member0-{n}" / "checkpoints" / "best.ckpt").read_text() for n in (1, 2)] == ["run 0", "run 1"]
    assert (folder / "checkpoints" / "best.ckpt").read_text() == "run 2"


def test_missing_training_log_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="no training log"):
        run_folders.epoch_metrics(tmp_path / "member0")


@pytest.mark.parametrize("values, rise", [
    ([0.157, 0.185, 0.203, 0.228, 0.227, 0.226], -0.001),  # 6 epochs: from epoch 4, epochs 5 and 6 fall
    ([0.142, 0.177, 0.204, 0.238, 0.240], 0.036),  # 5 epochs still rising: from epoch 3 to the best after it
    ([0.1] * 15 + [0.1, 0.1, 0.1, 0.12, 0.1], 0.02),  # 20 epochs: the paper's tail, epochs 15 to 20
])
def test_last_quarter_rise(values, rise):
    curve = pd.DataFrame({"epoch": range(len(values)), "val/mAP@10": values})
    assert run_folders.last_quarter_rise(curve) == pytest.approx(rise)


def test_last_quarter_rise_of_a_single_epoch_is_unknown():
    assert math.isnan(run_folders.last_quarter_rise(pd.DataFrame({"epoch": [0], "val/mAP@10": [0.2]})))


def test_text_step_cache_off_keeps_the_frozen_layers_dropout_in_training(tiny_home, tiny_stage1):
    """Off: training runs the frozen text layers every step (with their dropout); validation, which
    has no dropout, keeps its cache either way."""
    from salsa_lib.data import data_sources
    from salsa_lib.stages.training import RetrievalModule, make_loaders

    splits = data_sources.load_splits(data_sources.load_data_config("test"), ("train", "val"), progress=False)
    cached = {}
    for text_step_cache in (True, False):
        config = tiny_stage1.replace(text_step_cache=text_step_cache)
        train_set, train_loader, _ = make_loaders(config, splits["train"], splits["val"])
        module = RetrievalModule(config.to_params(), len(train_loader))
        module.train_set, module.val_split, module.val_samples = train_set, splits["val"], train_set.n_samples
        module.on_train_start()
        cached[text_step_cache] = (module._train_cache.text is not None, module._val_cache.text is not None)
    assert cached == {True: (True, True), False: (False, True)}


@pytest.fixture
def tiny_fit(tiny_home, tiny_stage1):
    """The miniature model, ready to train one epoch (4 steps) into stage1/member0 in fp32."""
    from salsa_lib.stages.training import RetrievalModule, fit, make_loaders

    splits = data_sources.load_splits(data_sources.load_data_config("test"), ("train", "val"), progress=False)
    config = tiny_stage1.replace(precision="32-true", accelerator="cpu")
    train_set, train_loader, val_loader = make_loaders(config, splits["train"], splits["val"])
    torch.manual_seed(0)
    module = RetrievalModule(config.to_params(), steps_per_epoch=len(train_loader))
    module.val_captions = splits["val"].captions
    folder = runs.member_dir("test", 0)
    return module, folder, lambda: fit(module, folder, train_set, train_loader, val_loader, progress=False)


@pytest.mark.slow
def test_steps_with_a_non_finite_loss_are_skipped_and_counted(tiny_fit, capsys):
    module, folder, run = tiny_fit
    loss, calls = module.loss, []

    def every_second_nan(logits, batch):
        calls.append(batch)
        return loss(logits, batch) * (float("nan") if len(calls) % 2 == 0 else 1.0)

    module.loss = every_second_nan
    result = run()
    assert len(calls) == 4 and result["skipped_steps"] == 2
    log = pd.read_csv(folder / "logs" / "attempt0" / "metrics.csv")
    assert log["train/skipped_steps"].dropna().tolist() == [2.0]
    assert np.isfinite(log["train/loss_epoch"].dropna()).all()  # the epoch's loss is over the steps that trained
    assert "stage1/member0: epoch 0 skipped 2 of 4 training steps" in capsys.readouterr().out
    # fp32 has no GradScaler: a NaN gradient reaching AdamW would have made every weight NaN
    assert all(torch.isfinite(p).all() for p in module.model.parameters())
    assert np.isfinite(result["val"]["mAP@10"])


@pytest.mark.slow
def test_an_epoch_without_a_finite_loss_stops_with_a_named_error(tiny_fit):
    module, folder, run = tiny_fit
    before = {k: v.clone() for k, v in module.model.state_dict().items()}
    module.loss = lambda logits, batch: logits.sum() * float("nan")
    with pytest.raises(NonFiniteError, match="stage1/member0: the loss was NaN or infinite in all 4 training "
                                             "steps of epoch 0 \\(precision 32-true\\)"):
        run()
    after = module.model.state_dict()
    assert [k for k in before if not torch.equal(before[k], after[k])] == []  # no skipped step moved a weight


@pytest.mark.slow
def test_nan_validation_embeddings_stop_before_a_checkpoint_is_chosen(tiny_fit):
    """NaN similarities used to rank at 0, an infinite mAP@10 that ModelCheckpoint kept as best.ckpt."""
    module, folder, run = tiny_fit
    embed_audio = module.model.embed_audio
    module.model.embed_audio = lambda *args, **kwargs: embed_audio(*args, **kwargs) * (
        1.0 if module.training else float("nan"))
    with pytest.raises(NonFiniteError, match="audio embeddings of stage1/member0 at epoch 0 on the validation split"):
        run()
    assert not (folder / "checkpoints" / "best.ckpt").exists()


def test_a_run_whose_log_holds_a_non_finite_score_is_refused(tmp_path):
    log = tmp_path / "member0" / "logs" / "attempt0"
    log.mkdir(parents=True)
    pd.DataFrame({"epoch": [0, 1, 2], "step": [4, 8, 12], "val/mAP@10": [0.2, np.inf, 0.3],
                  "train/loss_epoch": [2.0, 1.9, 1.8]}).to_csv(log / "metrics.csv", index=False)
    with pytest.raises(DataError, match="validation mAP@10 is inf at epoch 1"):
        run_folders.best_epoch_metrics(tmp_path / "member0")


# Six sounds that share nothing: noise in five separate frequency bands (Hz) and a click train, each
# named by its own words. No two overlap in spectrum or in caption, so a model that learns at all
# tells them apart.
SOUNDS = {"low rumble": (50, 200), "engine drone": (400, 800), "rushing water": (1500, 3000),
          "hissing steam": (5000, 8000), "shrill whistle": (11000, 15000), "ticking clock": None}
TEMPLATES = ["a {}", "the {} goes on", "someone makes a {}", "a steady {} sound", "we hear a {}"]
CAPTIONS = [template.format(name) for name in SOUNDS for template in TEMPLATES]  # clip-major, 5 per clip
assert len(TEMPLATES) == CAPTIONS_PER_CLIP


def _one_second_of_each(rng: np.random.Generator) -> torch.Tensor:
    """A fresh draw of every sound: new noise and loudness (bin k of a 1 s spectrum is k Hz), or clicks."""
    clips = []
    for band in SOUNDS.values():
        if band is None:
            wave = np.zeros(MODEL_SAMPLE_RATE)
            wave[rng.integers(3200)::3200] = 1.0
        else:
            spectrum = np.zeros(MODEL_SAMPLE_RATE // 2 + 1, complex)
            spectrum[band[0]:band[1]] = rng.standard_normal(np.diff(band)) + 1j * rng.standard_normal(np.diff(band))
            wave = np.fft.irfft(spectrum, MODEL_SAMPLE_RATE)
        clips.append(rng.uniform(0.2, 0.5) * wave / np.abs(wave).max())
    return torch.tensor(np.stack(clips), dtype=torch.float32)


def _retrieval(module: RetrievalModule, clips: torch.Tensor) -> dict:
    """Text-to-audio metrics of every caption against the clips, as validation computes them."""
    module.eval()
    with torch.no_grad():
        audio = module.model.embed_audio(clips, torch.ones(len(clips))).float().numpy()
        text = module.model.embed_text(CAPTIONS).float().numpy()
    return text_to_audio_metrics(text, audio, caption_clips(len(clips)))


def test_training_learns_what_is_certain_to_be_learnable(tiny_stage1):
    """A hundred steps of training's own module, loss, optimiser groups, step cache and precision rule take
    text-to-audio retrieval of six unmistakable sounds from chance to near perfect on clips it never saw."""
    torch.manual_seed(0)
    steps = 100
    config = tiny_stage1.replace(warmup_epochs=0.0, rampdown_start=1.0, rampdown_stop=2.0)  # constant learning rates
    module = RetrievalModule(config.to_params(), steps_per_epoch=steps)
    setup = module.configure_optimizers()
    optimizer, scheduler = setup["optimizer"], setup["lr_scheduler"]["scheduler"]
    with torch.no_grad():  # the frozen text layers' states, stored once per run where training stores them
        cache = StepCache(None, module.model.text_encoder.frozen_states(CAPTIONS)) if config.text_step_cache else None
    resolved = precision.resolve(config.precision, "cpu")  # as training resolves it on this CPU
    held_out = _one_second_of_each(np.random.default_rng(1))
    untrained = _retrieval(module, held_out)

    rng, clip_ids = np.random.default_rng(0), torch.arange(len(SOUNDS))
    for _ in range(steps):  # every step: fresh clips, one random caption each
        caption_ids = [CAPTIONS_PER_CLIP * clip + int(rng.integers(CAPTIONS_PER_CLIP)) for clip in range(len(SOUNDS))]
        batch = {"audio": _one_second_of_each(rng), "audio_length": torch.ones(len(SOUNDS)), "audio_idx": clip_ids,
                 "idx": torch.tensor(caption_ids), "caption": [CAPTIONS[j] for j in caption_ids]}
        manual_step(module, optimizer, batch, cache, resolved)
        scheduler.step()

    trained = _retrieval(module, held_out)
    chance = chance_map_at_k(len(SOUNDS))  # 0.41; R@1 by chance: 1/6
    assert untrained["R@1"] <= 0.5 and untrained["mAP@10"] <= chance + 0.2, untrained  # not solved before training
    assert trained["R@1"] >= 0.6 and trained["mAP@10"] >= chance + 0.4, trained
