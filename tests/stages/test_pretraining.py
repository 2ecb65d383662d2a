"""The audio encoder's tagging pretraining: a pool disjoint from the benchmark, right targets, caching."""

import json

import numpy as np
import pytest
import torch

from salsa_lib.config import Stage1Config
from salsa_lib.data import data_sources, synth
from salsa_lib.errors import ConfigError, DataError
from salsa_lib.stages import pretraining


def test_pool_is_disjoint_from_the_benchmark_splits(tiny_home):
    data = data_sources.load_data_config("test")
    root = data_sources.locate(data).root
    audio, clips = synth.tagging_pool(40, data.clip_seconds, 32000, seed=data.synthetic_seed)  # the same seed
    assert audio.shape == (40, 32000) and np.abs(audio).max() < 1
    assert synth.pool_overlap(clips, audio.shape[1], root) == []
    signatures = {synth.clip_signature(c, audio.shape[1]) for c in clips}
    benchmark = [json.loads((root / f"synthetic_events_{s}.json").read_text()) for s in synth.SPLITS]
    for record in benchmark:
        n = round(record["clip_seconds"] * record["sample_rate"])
        assert not signatures & {synth.clip_signature(c, n) for c in record["clips"]}
    # the check does catch a repeated clip, whatever the sample rate it was rendered at
    copied = json.loads(json.dumps(benchmark[2]["clips"][1]))
    rate = benchmark[2]["sample_rate"]
    for event in copied["events"]:
        event["onset_sample"] = round(event["onset_sample"] * 32000 / rate)
        event["offset_sample"] = round(event["offset_sample"] * 32000 / rate)
    assert synth.pool_overlap([clips[0], copied], audio.shape[1], root) == [(1, "evaluation", copied["file_name"])]


def test_pool_is_deterministic_and_not_the_benchmark_stream():
    first, clips = synth.tagging_pool(3, 0.5, 32000, seed=4)
    again, _ = synth.tagging_pool(3, 0.5, 32000, seed=4)
    other, _ = synth.tagging_pool(3, 0.5, 32000, seed=5)
    assert np.array_equal(first, again) and not np.array_equal(first, other)
    assert all(1 <= len(c["events"]) <= 3 for c in clips)


def test_tag_targets_name_every_source_and_value_of_the_clip():
    names = pretraining.tag_names()
    assert len(names) == len(set(names)) and "siren" in names and "siren:low" in names and "rain:low" not in names
    clip = {"events": [{"source": "bell", "attributes": {"pitch": "high", "loudness": "loud", "position": "end"}},
                       {"source": "rain", "attributes": {"loudness": "quiet", "position": "throughout"}}]}
    tags = pretraining.tag_matrix([clip], names)[0]
    assert {names[k] for k in np.flatnonzero(tags)} == {"bell", "bell:high", "bell:loud", "bell:end", "rain",
                                                         "rain:quiet", "rain:throughout"}


@pytest.mark.slow
def test_pretraining_is_cached_checked_and_loaded(tiny_home, tiny_stage1, monkeypatch):
    data = data_sources.load_data_config("test")
    config = tiny_stage1.replace(pretrain_clips=12, pretrain_epochs=1)
    record = pretraining.pretrain_or_reuse(config, data, progress=False)
    assert record["held_out_clips"] == 1 and 0 <= record["after"]["tag mAP"] <= 1
    assert set(record["before"]) == set(record["after"]) - {"epoch", "loss"}

    def no_training(*args, **kwargs):
        raise AssertionError("pretrained again")

    monkeypatch.setattr(pretraining, "train_tagger", no_training)
    assert pretraining.pretrain_or_reuse(config, data, progress=False) == record  # reused
    with pytest.raises(AssertionError, match="pretrained again"):  # --force redoes it
        pretraining.pretrain_or_reuse(config, data, progress=False, force=True)

    from salsa_lib.core.encoders import build_passt

    passt = build_passt("passt_small", 1.0, width=64, depth=1, heads=2)
    pretraining.load_pretrained(passt, "test", record)
    stored = torch.load(pretraining.checkpoint_path("test"), weights_only=True)["passt"]
    assert all(torch.equal(passt.state_dict()[k], v) for k, v in stored.items())
    with pytest.raises(DataError, match="hash mismatch"):
        pretraining.load_pretrained(passt, "test", {**record, "checkpoint_sha256": "0" * 64})


def test_pretraining_only_for_the_small_encoders():
    with pytest.raises(ConfigError, match="pretrain_clips"):
        Stage1Config(audio_encoder="passt_s_p16_s16_128_ap468", pretrain_clips=10)
    assert Stage1Config(audio_encoder="frames_small", pretrain_clips=10).pretrain_clips == 10
    assert Stage1Config(pretrain_clips=0).pretrain_clips == 0


@pytest.mark.slow
@pytest.mark.parametrize("family", ["mobilenet_small", "frames_small"])
def test_every_small_family_pretrains_into_its_own_folder(tiny_home, tiny_stage1, family):
    """The other families of the mixed ensemble learn to tag the same pool; their weights load into a
    fresh backbone of the family and never overwrite the small PaSST's."""
    from salsa_lib.core.encoders import build_audio_encoder

    data = data_sources.load_data_config("test")
    config = tiny_stage1.replace(pretrain_clips=12, pretrain_epochs=1, audio_encoder=family)
    record = pretraining.pretrain_or_reuse(config, data, progress=False)
    assert record["params"]["audio_encoder"] == family and 0 <= record["after"]["tag mAP"] <= 1
    path = pretraining.checkpoint_path("test", family)
    assert path.parent.name == family and path != pretraining.checkpoint_path("test")
    fresh = build_audio_encoder(family, config.window_seconds, config.passt_width, config.passt_depth,
                                config.passt_heads).trunk
    pretraining.load_pretrained(fresh, "test", record)
    stored = torch.load(path, weights_only=True)["passt"]
    assert stored.keys() == fresh.state_dict().keys()
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in stored.items())
