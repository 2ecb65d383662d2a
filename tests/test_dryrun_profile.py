"""The dry-run profile is the paper profile with declared changes only; its fake ClothoV2 has the real shape."""

import csv
import io

import soundfile as sf

from salsa_lib.core.captions import preprocess_caption
from salsa_lib.data import reference_queries
from salsa_lib.data.fake_clotho import METADATA_COLUMNS, install_fake_clotho
from salsa_lib.data.splits import read_captions_csv
from salsa_lib.profiles import PROFILES

HARDWARE = {"batch_size", "eval_batch_size", "embed_batch_size", "precision", "accelerator", "num_workers",
            "spectrogram_cache_gb"}
# Every parameter the dry run changes, with its value, stated here as data: a test that read them
# back from DRYRUN_CHANGES (what derive() is given) could not catch a wrong or an extra change.
CPU_TRAINING = {"batch_size": 2, "eval_batch_size": 2, "precision": "auto", "accelerator": "cpu", "num_workers": 0,
                "spectrogram_cache_gb": 0.0}
EXPECTED_CHANGES = {
    "data": {"dataset": "fake-clotho", "n_train_clips": 2, "n_val_clips": 2, "n_test_clips": 3},
    "stage1": {"pretrained_audio": False, "text_encoder": "random-roberta-large", "epochs": 1, **CPU_TRAINING},
    "correspondences": {"embed_batch_size": 2, "accelerator": "cpu"},
    "stage2": {"epochs": 1, **CPU_TRAINING},
    "evaluation": {"embed_batch_size": 2, "accelerator": "cpu"},
}


def test_the_dry_run_computes_the_stft_every_step_as_the_paper_run_must():
    """ClothoV2's spectrograms at 30 s exceed any cache; two fake clips would fit one, so the dry run
    sets the limit to 0 to walk the paper's per-step STFT under autocast."""
    dryrun = PROFILES["clotho-dryrun"]
    assert dryrun.stage1.spectrogram_cache_gb == dryrun.stage2.spectrogram_cache_gb == 0.0
    clips, windows, bins, frames = 3839, 3, 513, 1001  # ClothoV2 development at 30 s as 3 x 10 s windows
    assert clips * windows * bins * frames * 4 > PROFILES["clotho"].stage1.spectrogram_cache_gb * 1024**3


def test_dryrun_differs_from_clotho_only_where_it_says():
    clotho, dryrun = PROFILES["clotho"], PROFILES["clotho-dryrun"]
    assert set(dryrun.stage_configs()) >= set(EXPECTED_CHANGES)
    for stage, ours in dryrun.stage_configs().items():
        theirs = getattr(clotho, stage).to_params()
        changed = {k: v for k, v in ours.to_params().items() if theirs[k] != v}
        assert changed == {**EXPECTED_CHANGES.get(stage, {}), "profile": "clotho-dryrun"}, stage
    # besides data, weights and epochs, only batch size, precision and device
    stage1 = set(EXPECTED_CHANGES["stage1"]) - {"pretrained_audio", "text_encoder", "epochs"}
    assert stage1 <= HARDWARE and set(EXPECTED_CHANGES["stage2"]) - {"epochs"} <= HARDWARE
    paper = dryrun.stage1
    assert (paper.audio_encoder, paper.train_seconds, paper.window_seconds, paper.text_trainable_layers,
            paper.text_max_length, paper.tau, paper.embed_dim) == ("passt_s_p16_s16_128_ap468", 30.0, 10.0, -1,
                                                                   32, 0.05, 1024)
    assert dryrun.stage2.teachers == "self" and dryrun.stage2.sup_weight == 0.0


def test_fake_clotho_has_the_real_layout_and_dialect(tmp_path):
    root = install_fake_clotho(tmp_path / "clotho_v2", {"development": 1, "validation": 1, "evaluation": 3})
    assert (root / "archives" / "clotho_audio_evaluation.7z").is_file()
    frame = read_captions_csv(root / "clotho_captions_evaluation.csv")
    assert len(frame) == 3 and all("," in name for name in frame.file_name)
    raw = (root / "clotho_captions_development.csv").read_text()
    assert '"' in raw and "," in next(csv.reader(io.StringIO(raw.splitlines()[1])))[1]  # quoted commas
    for caption in frame[[f"caption_{k}" for k in range(1, 6)]].to_numpy().ravel():
        assert 8 <= len(preprocess_caption(caption).split()) <= 20, caption
    for name in frame.file_name:
        info = sf.info(root / "evaluation" / name)
        assert info.samplerate == 44100 and info.channels == 1 and 15 <= info.duration <= 30
    header = (root / "clotho_metadata_evaluation.csv").read_text().splitlines()[0]
    assert header.split(",") == METADATA_COLUMNS
    ids = reference_queries.read_sound_ids(root, "evaluation")
    assert ids[frame.file_name[0]] == 158513  # query 1's associated recording
    queries = reference_queries.readme_example_queries()["query"].unique()
    assert set(queries) <= set(frame.caption_1)


def test_random_text_encoder_has_roberta_large_shape():
    from salsa_lib.core.encoders import ROBERTA_LARGE_SHAPE

    assert (ROBERTA_LARGE_SHAPE["num_hidden_layers"], ROBERTA_LARGE_SHAPE["hidden_size"],
            ROBERTA_LARGE_SHAPE["num_attention_heads"], ROBERTA_LARGE_SHAPE["intermediate_size"]) == (24, 1024, 16, 4096)
    assert PROFILES["clotho-dryrun"].stage1.text_encoder == "random-roberta-large"
