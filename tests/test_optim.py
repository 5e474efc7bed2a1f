"""nlray.train.optim: the paper's step schedule, linear lr scaling, BN weight-decay groups."""
import pytest
import torch
from torch import nn

from nlray.config import load_config
from nlray.train.optim import StepPlan, build_optimizer, global_batch, lr_at, param_groups, peak_lr


def test_paper_schedule_steps_down_by_10_at_150k_and_300k():
    kw = dict(peak=0.01, milestones=[150_000, 300_000], gamma=0.1, warmup_steps=0)
    assert lr_at(0, **kw) == 0.01 and lr_at(149_999, **kw) == 0.01
    assert lr_at(150_000, **kw) == pytest.approx(0.001) and lr_at(299_999, **kw) == pytest.approx(0.001)
    assert lr_at(300_000, **kw) == pytest.approx(0.0001) and lr_at(399_999, **kw) == pytest.approx(0.0001)


def test_warmup_rises_linearly_to_the_peak():
    kw = dict(peak=0.1, milestones=[], gamma=0.1, warmup_steps=10)
    assert [round(lr_at(s, **kw), 6) for s in (0, 4, 9, 10)] == [0.01, 0.05, 0.1, 0.1]


def test_lr_scales_linearly_with_the_global_batch():
    t = load_config("nl_i3d_r50_32f").train  # 0.01 at 64 clips
    assert peak_lr(t, 64) == pytest.approx(0.01) and peak_lr(t, 16) == pytest.approx(0.0025)
    long = load_config("nl_i3d_r50_128f")  # 8 workers x 2 clips = 16: the paper's 0.0025
    assert peak_lr(long.train, global_batch(long.train, long.data.batch_size)) == pytest.approx(0.0025)


def test_accumulation_reaches_the_target_global_batch():
    t = load_config("nl_i3d_r50_32f", ["train.num_workers=2", "train.global_batch=64"]).train
    assert global_batch(t, 8) == 64 and StepPlan(64, 2, 8).accum == 4
    t0 = load_config("nl_i3d_r50_32f", ["train.num_workers=2"]).train
    assert global_batch(t0, 8) == 16 and StepPlan(16, 2, 8).accum == 1


@pytest.mark.parametrize("clips,world,batch", [(16, 2, 8), (16, 1, 8), (12, 2, 4), (16, 3, 4), (8, 3, 2),
                                                (64, 7, 8), (64, 5, 8)])
def test_every_world_size_makes_a_step_of_exactly_the_global_batch(clips, world, batch):
    plan = StepPlan(clips, world, batch)
    used = [[plan.used(r, m) for m in range(plan.accum)] for r in range(world)]
    assert sum(map(sum, used)) == clips and all(0 <= u <= batch for row in used for u in row)
    assert world * batch * (plan.accum - 1) < clips <= world * batch * plan.accum  # no micro-batch to spare


class Flat(nn.Module):
    """A model whose clips are independent in a forward (no BN): one linear layer on the flattened clip."""

    def __init__(self, frames: int, side: int, classes: int):
        super().__init__()
        self.fc = nn.Linear(3 * frames * side * side, classes)

    def forward(self, x):  # (B, 3, T, H, W) -> (B, K)
        return self.fc(x.flatten(1))


@pytest.mark.parametrize("clips,world,batch", [(12, 2, 4), (16, 3, 4), (8, 3, 2), (16, 2, 8)])
def test_the_weighted_micro_batches_give_the_full_batch_gradient(clips, world, batch):
    """micro_step on each rank (the loop's own code), the ranks' gradients then averaged as DDP does, against
    one forward and backward of the mean loss over the same clips (the clips that entered the loss)."""
    from nlray.train.loop import Loop, micro_step
    frames, side, classes = 2, 4, 5
    g = torch.Generator().manual_seed(0)
    model = Flat(frames, side, classes)
    plan = StepPlan(clips, world, batch)
    cfg = load_config("demo", ["data.frames=2", "train.bf16=false"])
    grads, taken = [], []
    for rank in range(world):
        model.zero_grad()
        loop = Loop(cfg, model, None, torch.device("cpu"), run=None, meta={}, peak_lr=0.1, plan=plan,
                    logged_upto=0, rank=rank)
        for m in range(plan.accum):
            video = torch.randint(0, 256, (batch, frames, side, side, 3), dtype=torch.uint8, generator=g)
            label = torch.randint(0, classes, (batch,), generator=g)
            due = micro_step(loop, {"video": video, "label": label}, waited=0.0)
            assert due == (m == plan.accum - 1)
            n = plan.used(rank, m)
            taken.append((video[:n], label[:n]))
        grads.append([p.grad.clone() for p in model.parameters()])
    ddp = [torch.stack(gs).mean(0) for gs in zip(*grads)]  # DDP's all-reduce: the mean over ranks

    from nlray.data.transforms import normalize_on_device
    video, label = torch.cat([v for v, _ in taken]), torch.cat([y for _, y in taken])
    assert len(label) == clips
    model.zero_grad()
    torch.nn.functional.cross_entropy(model(normalize_on_device(video, dtype=torch.float32)), label).backward()
    for got, want in zip(ddp, (p.grad for p in model.parameters())):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)


def test_bn_parameters_can_skip_weight_decay():
    model = nn.Sequential(nn.Conv3d(3, 4, 1), nn.BatchNorm3d(4), nn.Linear(4, 2))
    decay, bn = param_groups(model, 1e-4, decay_bn=False)
    assert {id(p) for p in bn["params"]} == {id(model[1].weight), id(model[1].bias)}
    assert bn["weight_decay"] == 0.0 and decay["weight_decay"] == 1e-4 and len(decay["params"]) == 4
    t = load_config("nl_i3d_r50_32f", ["train.nesterov=true"]).train
    opt = build_optimizer(model, t, 0.01)
    assert isinstance(opt, torch.optim.SGD) and opt.defaults["nesterov"] and opt.defaults["momentum"] == 0.9


def test_the_schedule_scales_to_the_papers_epochs_on_fewer_workers_only_when_asked():
    from nlray.config import load_config
    from nlray.train.optim import scaled_schedule
    t = load_config("nl_i3d_r50_32f", ["train.num_workers=2", "data.batch_size=8",  # 16 clips a step
                                       "train.scale_schedule=false"]).train
    same, params = scaled_schedule(t, 8)
    assert (same.steps, same.lr_milestones) == (400_000, [150_000, 300_000]) and params["actual.lr"] == 0.0025
    t.scale_schedule = True
    run, params = scaled_schedule(t, 8)  # the paper's 64 clips a step, 4x fewer a step here: 4x the steps
    assert (run.steps, run.lr_milestones) == (1_600_000, [600_000, 1_200_000])
    assert params["paper.global_batch"] == 64 and params["actual.global_batch"] == 16
    assert params["paper.steps"] == 400_000 and params["actual.steps"] == 1_600_000
    assert run.steps * 16 == t.steps * 64  # the same clips seen
