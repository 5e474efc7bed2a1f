"""Precise BN against what it must equal: after one batch, every BN layer holds that batch's statistics,
so the network in eval mode computes what it computes in training mode on that batch."""
from __future__ import annotations

import copy

import torch

from nlray.config import load_config
from nlray.models import build_model, freeze_batchnorm
from nlray.train.precise_bn import bn_layers, update_bn_stats


def small_model():
    torch.manual_seed(0)
    cfg = load_config("demo", ["model.dropout=0.0", "model.width=4"])
    return build_model(cfg.model, num_classes=3)


def test_after_one_batch_eval_mode_equals_train_mode_on_that_batch():
    model, x = small_model(), torch.randn(3, 3, 8, 32, 32)
    for m in bn_layers(model):  # statistics far from the data's, so a no-op would show
        m.running_mean.fill_(5.0)
        m.running_var.fill_(9.0)
    assert update_bn_stats(model, [x], max_batches=4) == 1
    with torch.no_grad():
        want = copy.deepcopy(model).train()(x)  # BN normalises by the batch's own statistics
        got = model.eval()(x)  # BN uses the recomputed running statistics
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_the_first_layer_gets_the_mean_and_variance_over_all_batches_and_frozen_bn_too():
    model = freeze_batchnorm(small_model())
    batches = [torch.randn(2, 3, 8, 32, 32) + i for i in range(3)]
    assert update_bn_stats(model, iter(batches), max_batches=2) == 2  # the third is not read
    with torch.no_grad():
        y = torch.cat([model.conv1(b) for b in batches[:2]])  # [4, C, T, H, W] what bn1 saw
    torch.testing.assert_close(model.bn1.running_mean, y.mean((0, 2, 3, 4)), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(model.bn1.running_var, y.var((0, 2, 3, 4), unbiased=False), rtol=1e-4, atol=1e-5)
    assert type(model.bn1).forward is model.bn1.forward.__func__  # the class's forward is back


def test_frozen_bn_gets_its_statistics_before_fine_tuning_and_the_final_checkpoint_waits_only_otherwise():
    from nlray.train.loop import precise_at_end, save_due
    short = load_config("demo", ["train.precise_bn_batches=20", "train.steps=100", "train.checkpoint_every=50"]).train
    long = load_config("demo_128f", ["train.precise_bn_batches=20", "train.steps=100",
                                     "train.checkpoint_every=50"]).train
    assert precise_at_end(short) and not precise_at_end(long)
    assert [save_due(short, s) for s in (50, 100)] == [True, False]  # the final one after the statistics
    assert [save_due(long, s) for s in (50, 100)] == [True, True]
