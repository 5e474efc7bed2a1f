"""train.channels_last and train.compile change speed, not the numbers: 3 SGD steps of the shrunk demo model
through the worker loop's own functions (build_worker_model, speed_up, micro_step, optimizer_step) give the
same losses, to 1e-5, with each option on as with both off (float32 on the CPU). And what a CPU can check of
the mixed precision and the process group: no GradScaler anywhere (bf16 autocast needs none), and workers
without GPUs ask Ray Train for none, so its default backend rule picks gloo (nccl only with GPUs)."""
from __future__ import annotations

import dataclasses
import inspect
import time
from pathlib import Path

import pytest
import torch

from nlray.config import load_config
from nlray.train.loop import Loop, build_worker_model, micro_step, optimizer_step
from nlray.train.optim import StepPlan, build_optimizer, global_batch, peak_lr
from nlray.train.speedups import speed_up, unwrap
from tiny import TINY

# The demo's own 64x64 crop, not TINY's 32: at 32 the last stage is 1x1 in space and its BN statistics come
# from a few values a channel; float32 rounding (~1e-4 of a gradient there, contiguous or not, as against
# float64) then grows to ~4e-3 of the loss by the third step. Dropout off: a compiled model draws its masks
# with inductor's own generator, so the same seed gives other masks (of the same distribution). One non-local
# block (res3), not the demo's two: compiling on 2 CPU cores takes ~40 s so, ~65 s with both.
OVERRIDES = [*TINY, "data.train_short_side=[64,80]", "data.crop_size=64", "model.num_classes=6", "model.dropout=0",
             "model.nonlocal_placement=[[3,0]]", "train.warmup_steps=0"]
STEPS = 3


def losses(**options: bool) -> list[float]:
    """The loss of each of STEPS optimizer steps on one fixed uint8 batch, the model seeded alike."""
    cfg = load_config("demo", OVERRIDES + [f"train.{k}={str(v).lower()}" for k, v in options.items()])
    tcfg = cfg.train
    torch.manual_seed(tcfg.seed)  # as setup (rank 0)
    model = build_worker_model(cfg)
    model = speed_up(model, channels_last=tcfg.channels_last, compile=tcfg.compile)  # as setup, before DDP
    model.train()
    lr = peak_lr(tcfg, global_batch(tcfg, cfg.data.batch_size))
    loop = Loop(cfg, model, build_optimizer(model, tcfg, lr), torch.device("cpu"), run=None, meta={},
                peak_lr=lr, plan=StepPlan(cfg.data.batch_size, 1, cfg.data.batch_size), logged_upto=0)
    d, g = cfg.data, torch.Generator().manual_seed(1)
    batch = {"video": torch.randint(0, 256, (d.batch_size, d.frames, d.crop_size, d.crop_size, 3),
                                    dtype=torch.uint8, generator=g),  # (B, T, H, W, C) as the data pipeline's
             "label": torch.randint(0, 6, (d.batch_size,), generator=g)}
    out = []
    for step in range(1, STEPS + 1):
        assert micro_step(loop, batch, waited=0.0)
        optimizer_step(loop, step)
        out.append(float(loop.meter.sums[0]) / d.batch_size)  # this step's mean loss
        loop.meter.reset()
    if tcfg.channels_last:  # the weights stayed in the layout asked for
        conv = next(p for p in unwrap(model).parameters() if p.dim() == 5)
        assert conv.is_contiguous(memory_format=torch.channels_last_3d) and not conv.is_contiguous()
    return out


@pytest.fixture(scope="module")
def baseline() -> list[float]:
    return losses()


def inductor_unavailable() -> str:
    """Why torch.compile (inductor) cannot run on this machine's CPU: it builds its CPU kernels with a C++
    compiler (config.cpp.cxx, $CXX); '' when one is found (or the lookup moved: the compile then says)."""
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler
    except ImportError:
        return ""
    try:
        get_cpp_compiler()
    except Exception as exc:  # noqa: BLE001 - torch._inductor.exc.InvalidCxxCompiler and kin
        return f"torch.compile cannot build CPU kernels here: {type(exc).__name__}: {str(exc).strip()[:300]}"
    return ""


def test_both_off_by_default():
    tcfg = load_config("demo").train
    assert tcfg.channels_last is False and tcfg.compile is False


def test_channels_last_gives_the_same_losses(baseline):
    got = losses(channels_last=True)
    print(f"channels_last: baseline {baseline} got {got}")
    assert got == pytest.approx(baseline, abs=1e-5, rel=0)
    assert baseline[-1] < baseline[0]  # the steps do train: the comparison is not of constants


def test_compile_gives_the_same_losses(baseline):
    reason = inductor_unavailable()
    if reason:
        pytest.skip(reason)
    t0 = time.perf_counter()
    try:
        got = losses(compile=True)
    finally:
        torch._dynamo.reset()  # no compiled code or recompile counts left to the tests after this one
    print(f"compile ({time.perf_counter() - t0:.1f} s): baseline {baseline} got {got}")
    assert got == pytest.approx(baseline, abs=1e-5, rel=0)


def test_a_compiled_model_checkpoints_under_the_plain_names():
    model = build_worker_model(load_config("demo", OVERRIDES))
    compiled = speed_up(model, channels_last=False, compile=True)  # lazy: nothing is compiled yet
    assert next(iter(compiled.state_dict())).startswith("_orig_mod.")
    assert unwrap(compiled) is model and list(unwrap(compiled).state_dict()) == list(model.state_dict())


def test_no_grad_scaler_bf16_needs_none():
    """bf16 keeps float32's exponent range, so its gradients do not underflow the way float16's do: the
    loop autocasts to bfloat16 only (train.bf16, on GPUs) and scales no loss."""
    package = Path(__file__).resolve().parents[1] / "nlray"
    sources = {p: p.read_text() for p in package.rglob("*.py")}
    assert not [p for p, text in sources.items() if "GradScaler" in text or "float16" in text.replace("bfloat16", "")]


def test_workers_without_gpus_ask_for_none_so_ray_picks_gloo():
    """Ray Train's TorchConfig(backend=None), which TorchTrainer gets when given none (make_trainer gives
    none), picks nccl when a worker has a GPU and gloo otherwise; the GPU request follows train.use_gpu."""
    from ray.train.torch import TorchConfig

    from nlray.train.trainer import make_trainer, worker_resources

    assert TorchConfig().backend is None and "torch_config" not in inspect.getsource(make_trainer)
    cfg = load_config("demo")
    cfg = dataclasses.replace(cfg, cluster=dataclasses.replace(cfg.cluster, train_resource=""))  # asks no cluster
    assert cfg.train.use_gpu is False and "GPU" not in worker_resources(cfg)
    gpu = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, use_gpu=True))
    assert worker_resources(gpu)["GPU"] == 1.0
