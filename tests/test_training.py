"""The learning-rate schedule of spec section 8, in closed form and as the optimiser applies it; steps
and validations whose numbers are not finite."""

import math

import numpy as np
import pandas as pd
import pytest
import torch

from salsa_lib import data_sources, run_folders, runs
from salsa_lib.config import Stage1Config
from salsa_lib.errors import ConfigError, DataError, NonFiniteError
from salsa_lib.training import learning_rate

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
    from salsa_lib.training import RetrievalModule

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
    assert (run_folders.last_quarter_rise(curve) <= run_folders.FLAT_RISE) == (rise <= 0.005)


def test_last_quarter_rise_of_a_single_epoch_is_unknown():
    assert math.isnan(run_folders.last_quarter_rise(pd.DataFrame({"epoch": [0], "val/mAP@10": [0.2]})))


def test_text_step_cache_off_keeps_the_frozen_layers_dropout_in_training(tiny_home, tiny_stage1):
    """Off: training runs the frozen text layers every step (with their dropout); validation, which
    has no dropout, keeps its cache either way."""
    from salsa_lib import data_sources
    from salsa_lib.training import RetrievalModule, make_loaders

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
    from salsa_lib.training import RetrievalModule, fit, make_loaders

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
