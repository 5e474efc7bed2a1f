"""Scoring spread over several ViewScorer actors (the validation after training: train.val_actors, default
one a training worker): the views are scored by distinct actor processes, and the video-level numbers
are those of one actor on the same views (eval mode is deterministic: same model, same views)."""
from __future__ import annotations

import sys
import time

import numpy as np
import pytest
import ray
import ray.cloudpickle
import torch

from nlray.config import load_config
from nlray.data import resolve_dataset
from nlray.models import build_model
from nlray.train.evaluate import ViewScorer, evaluate, scorer_pool
from tiny import TINY

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the actors cannot import a test module


class SlowScorer(ViewScorer):
    """ViewScorer whose batches take a second longer: scoring is then the bottleneck, as it is for the
    600k views of a Kinetics validation on a real model (here the tiny model scores a batch in ~0.05 s,
    faster than the decoders feed it, so one actor would keep up alone). The scores are ViewScorer's."""

    def __call__(self, batch):
        time.sleep(1.0)
        return super().__call__(batch)


@pytest.fixture(scope="module")
def setup(ray_local, s3_data, tmp_path_factory):
    cache = tmp_path_factory.mktemp("val-actors") / "cache"
    # one video a decoder call, 2 views (TINY: 2 clips x 1 crop) a scorer batch: one scorer task a video
    cfg = load_config("demo", [*TINY, f"data.root={s3_data}", f"data.cache_dir={cache}", "name=val-actors",
                               "data.decode_batch=1", "data.batch_size=2"])
    df, labels = resolve_dataset(cfg.data)
    cfg.model.num_classes = len(labels)
    torch.manual_seed(0)
    state = build_model(cfg.model, num_classes=cfg.model.num_classes).state_dict()
    return cfg, df, state


@pytest.fixture
def pools_ready_before_scoring():
    """Ray Data starts a pool's actors asynchronously and hands batches to those that are up; on a busy
    2-core machine the second scorer may still be importing torch when the split is done. Wait for the
    pools, so that what is checked is the spreading, not that start-up race."""
    ctx = ray.data.DataContext.get_current()
    saved = ctx.wait_for_min_actors_s
    ctx.wait_for_min_actors_s = 120
    yield
    ctx.wait_for_min_actors_s = saved


def per_video(scores) -> dict[int, np.ndarray]:
    return {v: scores.sums[v] / scores.views[v] for v in scores.sums}


def test_two_scorers_share_the_views_and_agree_with_one(setup, pools_ready_before_scoring):
    cfg, df, state = setup
    one = evaluate(cfg, df, state, actors=1)
    two = evaluate(cfg, df, state, actors=2, scorer=SlowScorer)
    assert len(one.scorers) == 1
    assert len(two.scorers) == 2, f"views scored by {two.scorers}: not spread over 2 actors"
    m1, m2 = one.metrics(), two.metrics()
    assert m1["views"] == m2["views"] == m1["videos"] * 2 and m1["videos"] == m1["videos_total"]
    assert m2 == pytest.approx(m1, abs=1e-5)
    a, b = per_video(one), per_video(two)
    assert sorted(a) == sorted(b)
    for v in a:
        np.testing.assert_allclose(a[v], b[v], atol=1e-5, rtol=0)


def test_scorer_pool_asks_a_gpu_each_on_gpus_else_cpus():
    gpu, cpu = scorer_pool(4, True, 1.0), scorer_pool(3, False, 0.5)
    assert (gpu["compute"].min_size, gpu["compute"].max_size, gpu["num_gpus"], gpu["num_cpus"]) == (4, 4, 1, 0)
    assert (cpu["compute"].min_size, cpu["compute"].max_size, cpu["num_gpus"], cpu["num_cpus"]) == (3, 3, 0, 0.5)
    assert scorer_pool(0, False)["compute"].min_size == 1


class RecordingRun:
    def __init__(self):
        self.metrics = {}

    def log_metrics(self, metrics, step):
        self.metrics.update(metrics)

    def log_png(self, path):
        pass

    def log_text(self, text, name):
        pass


@pytest.mark.parametrize("val_actors, gpus, expected", [
    (0, False, dict(actors=2, use_gpu=False, cpus_per_actor=1.5)),  # default: one a training worker
    (3, False, dict(actors=3, use_gpu=False, cpus_per_actor=1.5)),
    (0, True, dict(actors=2, use_gpu=True, cpus_per_actor=1.5)),  # a GPU each (scorer_pool: no CPU then)
])
def test_validation_after_training_sizes_its_scorers_from_the_config(monkeypatch, val_actors, gpus, expected):
    import pandas as pd

    from nlray.train import trainer
    from nlray.train.evaluate import VideoScores

    cfg = load_config("demo", [*TINY, "train.num_workers=2", "train.cpus_per_worker=1.5",
                               f"train.val_actors={val_actors}", f"train.use_gpu={str(gpus).lower()}"])
    seen = {}

    def fake_evaluate(cfg, df, state, **kwargs):
        seen.update(kwargs)
        scores = VideoScores(2)
        scores.add(np.array([0]), np.array([1]), np.array([[0.3, 0.7]]))
        return scores

    monkeypatch.setattr(trainer, "evaluate", fake_evaluate)
    monkeypatch.setattr(trainer.raycluster, "has_gpus", lambda: gpus)
    df = pd.DataFrame({"split": ["val"], "uri": ["x.mp4"], "label_id": [1]})
    run = RecordingRun()
    trainer.validate(cfg, df, ["a", "b"], run, {}, 5)
    assert {k: seen[k] for k in expected} == expected
    assert run.metrics["val/video_top1"] == 1.0
