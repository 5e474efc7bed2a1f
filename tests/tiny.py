"""Overrides that shrink the demo preset to seconds per run on 2 CPU cores (trainer and fault tests)."""
TINY = ["model.width=8", "data.frames=8", "data.train_short_side=[40,48]", "data.crop_size=32",
        "data.eval_short_side=32", "data.eval_crop_size=32", "data.eval_num_clips=2", "data.batch_size=4",
        "train.log_every=8", "train.checkpoint_every=20", "train.keep_checkpoints=2", "train.warmup_steps=8",
        "train.lr_milestones=[1000]", "train.base_lr=0.01",
        "data.repeat=40"]  # 320 clips, 40 steps an epoch: each new epoch restarts the decoder pool (~6 s here)
