"""Helper for test_ddp.py: train two single-step epochs on one fixed global batch, record the losses.

Run as a script because Lightning's DDP launcher restarts the script in each process.
    python tests/stages/_ddp_run.py DEVICES OUT_JSON SALSA_HOME
"""

import json
import os
import sys

import lightning.pytorch as pl

devices, out_path, home = int(sys.argv[1]), sys.argv[2], sys.argv[3]
os.environ["SALSA_HOME"] = home

from salsa_lib.config import Stage1Config  # noqa: E402
from salsa_lib.data import data_sources  # noqa: E402
from salsa_lib.stages.training import RetrievalModule, make_loaders  # noqa: E402

GLOBAL_BATCH = 10  # the whole training split below (2 clips x 5 captions): one step per epoch


class RecordLoss(pl.Callback):
    def __init__(self):
        self.losses = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(float(outputs["loss"]))


data = data_sources.load_data_config("ddp")
splits = data_sources.load_splits(data, ("train", "val"), progress=False)
config = Stage1Config(profile="ddp", passt_width=64, passt_depth=1, passt_heads=2, text_trainable_layers=1,
                      text_dropout=0.0, embed_dim=32, train_seconds=1.0, eval_seconds=1.0, window_seconds=1.0,
                      batch_size=GLOBAL_BATCH // devices, eval_batch_size=2, epochs=2, warmup_epochs=0.0,
                      rampdown_start=0.0, rampdown_stop=10.0, lr_audio_encoder=1e-2, lr_text_encoder=1e-2,
                      lr_audio_projection=1e-2, lr_text_projection=1e-2, accelerator="cpu", devices=devices)
pl.seed_everything(0, verbose=False)
_, train_loader, val_loader = make_loaders(config, splits["train"], splits["val"])
module = RetrievalModule(config.to_params(), steps_per_epoch=1)
module.val_captions = splits["val"].captions
# switch off the augmentations, whose random draws depend on the process's RNG stream
module.model.audio_encoder.passt.s_patchout_t = module.model.audio_encoder.passt.s_patchout_f = 0
module.model.audio_encoder.mel.fmin_aug_range = module.model.audio_encoder.mel.fmax_aug_range = 1
recorder = RecordLoss()
trainer = pl.Trainer(max_epochs=2, accelerator="cpu", devices=devices, strategy="ddp" if devices > 1 else "auto",
                     logger=False, enable_checkpointing=False, enable_progress_bar=False, callbacks=[recorder],
                     num_sanity_val_steps=0, limit_val_batches=0, enable_model_summary=False)
trainer.fit(module, train_loader, val_loader)
if trainer.global_rank == 0:
    with open(out_path, "w") as f:
        json.dump({"losses": recorder.losses, "world_size": trainer.world_size}, f)
