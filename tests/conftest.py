"""Shared fixtures: a miniature synthetic data set under a temporary SALSA_HOME."""

import pytest

from salsa_lib.config import DataConfig, Stage1Config
from salsa_lib.data import data_sources

TINY_DATA = dict(n_train_clips=8, n_val_clips=4, n_test_clips=4, clip_seconds=1.0, source_sample_rate=16000)
# a model small enough that a training step takes well under a second on 2 cores
TINY_MODEL = dict(other_members="", passt_width=64, passt_depth=1, passt_heads=2, text_trainable_layers=1, embed_dim=32,
                  train_seconds=1.0, eval_seconds=1.0, window_seconds=1.0, batch_size=10, eval_batch_size=4,
                  epochs=1, warmup_epochs=0.5, rampdown_start=0.5, rampdown_stop=1.0, members=1,
                  pretrain_clips=0)


@pytest.fixture
def tiny_home(tmp_path, monkeypatch):
    """SALSA_HOME with a prepared 8/4/4-clip synthetic set (notebook 00's outputs) for profile 'test'."""
    monkeypatch.setenv("SALSA_HOME", str(tmp_path))
    config = DataConfig(profile="test", **TINY_DATA)
    data_sources.fetch(config, progress=False)
    data_sources.load_splits(config, progress=False)
    data_sources.save_data_config(config)
    return tmp_path


@pytest.fixture
def tiny_stage1() -> Stage1Config:
    return Stage1Config(profile="test", **TINY_MODEL)
