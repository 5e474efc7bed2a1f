"""The console's parts: the progress line of a logging interval, evaluation progress, training batches that
own their memory (no torch warning). A whole run's console, warnings of ours as errors, is checked on the
embedded default submitted as a job to a multi-node cluster (tests/test_multinode.py, tests/console.py)."""
from __future__ import annotations

import logging
import warnings

import numpy as np
import torch

from nlray.train.evaluate import log_progress
from nlray.progress import format_duration, progress_line
from nlray.train.loop import TrainBatch

INTERVAL = {"train/loss": 1.2344, "train/clip_top1": 0.5, "train/clips_per_s": 55.12,
            "train/data_wait_share": 0.031}


def test_progress_line_shows_an_interval_and_the_eta():
    # 25 s for 120 steps: 0.2083 s a step x 1080 left = 225 s
    assert progress_line(120, 1200, 1, INTERVAL, 0.01, 25.0, 120) == (
        "step 120/1200 (10%) epoch 1 loss 1.234 clip_top1 0.500 lr 0.0100 clips/s 55.1 data_wait 3% eta 3m45s")


def test_eta_counts_the_steps_of_this_session_only():
    # resumed at step 100: 50 steps in 100 s, 2 s a step x 50 left
    assert progress_line(150, 200, 3, INTERVAL, 0.001, 100.0, 50).endswith("lr 0.0010 clips/s 55.1 "
                                                                          "data_wait 3% eta 1m40s")
    assert progress_line(200, 200, 3, INTERVAL, 0.001, 100.0, 50).endswith("(100%) epoch 3 loss 1.234 "
                                                                          "clip_top1 0.500 lr 0.0010 clips/s "
                                                                          "55.1 data_wait 3% eta 0s")
    assert progress_line(0, 200, 0, INTERVAL, 0.1, 0.0, 0).endswith("eta ?")


def test_format_duration():
    assert [format_duration(s) for s in (0, 42.4, 59.6, 250, 3599, 3725, 90000)] == [
        "0s", "42s", "1m00s", "4m10s", "59m59s", "1h02m", "25h00m"]


def test_eval_progress_logs_each_tenth_once(caplog):
    logged = 0
    with caplog.at_level(logging.INFO, logger="nlray"):
        for done in (3, 9, 10, 11, 25, 25, 99, 100):  # videos with scored views, as batches arrive
            logged = log_progress(done, 100, logged)
    assert [r.getMessage() for r in caplog.records] == [
        "eval 10/100 videos", "eval 25/100 videos", "eval 99/100 videos", "eval 100/100 videos"]


def test_train_batches_own_their_memory():
    video = np.arange(2 * 3 * 4 * 4 * 3, dtype=np.uint8).reshape(2, 3, 4, 4, 3)
    batch = {"video": video.copy(), "label": np.array([1, 2], np.int32), "video_idx": np.array([5, 6])}
    for a in batch.values():
        a.flags.writeable = False  # as Ray hands them over: views of the object store
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch warns on a read-only array
        out = TrainBatch()(batch)
    assert out["video"].dtype == torch.uint8 and torch.equal(out["video"], torch.from_numpy(video))
    assert out["label"].dtype == out["video_idx"].dtype == torch.int64
    assert out["label"].tolist() == [1, 2] and out["video_idx"].tolist() == [5, 6]
