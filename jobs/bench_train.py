"""Time the training step of nlray presets on one device: clips/s, achieved TFLOPS, MFU, peak memory, max batch.

    python jobs/bench_train.py --quick                                   # CUDA: the two R50 presets (~a few minutes)
    python jobs/bench_train.py --preset nl_i3d_r50_32f --batch 16 --max-batch
    python jobs/bench_train.py --preset demo --device cpu --dtype float32 --batch 2 --steps 2 --warmup 1

The step is the one a Ray Train worker runs (nlray.train.loop): the model built as ``build_worker_model``
does (``build_model`` with the preset's ``train.activation_checkpointing``, BN frozen when
``train.freeze_bn``), the SGD of ``build_optimizer``, then per step forward under bf16 autocast (when
--dtype bfloat16), cross-entropy on float32 logits, backward, ``optimizer.step()``,
``zero_grad(set_to_none=True)``. The input is random float32 [B, 3, T, H, W] (T = data.frames,
H = W = data.crop_size) already on the device, labels random (400 classes when model.num_classes is 0):
no data pipeline, no host-to-device copy. One device only: DDP (its gradient all-reduce) is NOT exercised.

Per case one JSON line: clips_per_s and step_s (median of --steps timed steps after --warmup, each
bracketed by torch.cuda.synchronize), tflops = training FLOPs per clip × clips/s / 1e12 where training
FLOPs per clip = 3 × 2 × the forward multiply-adds of nlray.models.summary (model FLOPs: the recompute of
activation checkpointing is not counted, so with it the hardware does ~4/3 of that), mfu = tflops /
peak (dense bf16 peak by device name, --peak-tflops overrides; null on the CPU, for float32 without
--peak-tflops, or for an unknown device), peak_mem_gb (torch.cuda.max_memory_allocated over the timed
steps), max_batch (on cuda unless --no-max-batch: the largest per-device batch for which one
forward + backward + optimizer step runs, found by doubling from --batch, then bisecting, on CUDA
out-of-memory; capped at --max-batch-limit, max_batch_status says "exact", "limit" (the cap fits) or
"time_limit" (a lower bound); on the CPU there is no OOM to find, so it is null unless --max-batch is
given, and then the search stops at the cap). A case that fails prints a record with "error"
instead; a last line {"summary": [...]} gathers the cases. --time-limit-s skips what would start after
it (timing cut short, max-batch searches stopped with a lower bound), so that a run fits a device lease.

--quick: nl_i3d_r50_32f at batch 8 and nl_i3d_r50_128f at batch 2 with activation checkpointing, both
bf16, warm-up 3, 8 timed steps, max-batch searches capped at 64 and 32, time limit 420 s unless given.

Presets: --preset is repeatable and takes comma lists (one case each); an overlay of presets, which
nlray.config.load_config writes with a comma, is written with "+" here (nl_i3d_r50_32f+caffe2).
"""
from __future__ import annotations

import argparse
import gc
import json
import math
import signal
import statistics
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from nlray.config import Config, load_config  # noqa: E402
from nlray.models import build_model, freeze_batchnorm  # noqa: E402
from nlray.models.summary import SUMMARY_CLASSES, summarize_config  # noqa: E402
from nlray.train.optim import build_optimizer, global_batch, peak_lr  # noqa: E402
from nlray.train.speedups import as_input, speed_up, unwrap  # noqa: E402

# dense (no sparsity) bf16 tensor-core peak, TFLOPS, by a substring of torch.cuda.get_device_name;
# the longest matching key wins ("A100" before "A10", "L40S" before "L4")
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0, "A10": 125.0}
QUICK_CASES = [  # (preset, batch, activation checkpointing, max-batch cap)
    ("nl_i3d_r50_32f", 8, False, 64),
    ("nl_i3d_r50_128f", 2, True, 32),
]
QUICK_STEPS, QUICK_WARMUP, QUICK_TIME_LIMIT_S = 8, 3, 420.0


class Terminated(BaseException):
    """SIGTERM (a lease's timeout): stop, but still print the summary of what was measured."""


@dataclass
class Case:
    preset: str  # as given ("+" for overlays)
    batch: Optional[int]  # None: the preset's data.batch_size
    activation_checkpointing: Optional[bool]  # None: the preset's train.activation_checkpointing
    search: bool  # find max_batch
    search_limit: int


def peak_tflops_for(device_name: str, dtype: str, override: Optional[float]) -> Optional[float]:
    if override:
        return float(override)
    if dtype != "bfloat16":
        return None
    hits = [k for k in PEAK_BF16_TFLOPS if k.lower() in device_name.lower()]
    return PEAK_BF16_TFLOPS[max(hits, key=len)] if hits else None


def is_oom(exc: BaseException) -> bool:
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    text = str(exc).lower()
    return "out of memory" in text or "can't allocate memory" in text or "alloc_failed" in text


def short(exc: BaseException) -> str:
    first = (str(exc).strip().splitlines() or [""])[0]
    return f"{type(exc).__name__}: {first[:300]}"


def sig(x: float, digits: int = 6) -> float:
    return float(f"{x:.{digits}g}")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


class Bench:
    """One preset's model and optimizer on the device, and its training step at any batch size."""

    def __init__(self, cfg: Config, device: torch.device, *, bf16: bool, channels_last: bool, compile: bool):
        self.cfg, self.device, self.bf16, self.channels_last = cfg, device, bf16, channels_last
        self.num_classes = cfg.model.num_classes or SUMMARY_CLASSES
        torch.manual_seed(cfg.train.seed)  # rank 0's seed in nlray.train.loop.setup
        # nlray.train.loop.build_worker_model, then setup's freeze_batchnorm; prepare_model (DDP) left out
        model = build_model(cfg.model, num_classes=self.num_classes,
                            activation_checkpointing=cfg.train.activation_checkpointing)
        if cfg.train.freeze_bn:
            model = freeze_batchnorm(model)
        # what setup applies as train.channels_last / train.compile (nlray.train.speedups)
        self.forward = speed_up(model.to(device), channels_last=channels_last, compile=compile)
        self.model = unwrap(self.forward)
        self.model.train()
        lr = peak_lr(cfg.train, global_batch(cfg.train, cfg.data.batch_size))  # the value does not matter here
        self.optimizer = build_optimizer(self.model, cfg.train, lr)

    def inputs(self, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        d = self.cfg.data
        x = torch.randn(batch, 3, d.frames, d.crop_size, d.crop_size, device=self.device)  # [B, 3, T, H, W] float32
        x = as_input(x, self.channels_last)
        y = torch.randint(0, self.num_classes, (batch,), device=self.device)
        return x, y

    def step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """nlray.train.loop.forward_loss + micro_step's backward + optimizer_step (one micro-batch a step)."""
        with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            logits = self.forward(x)  # [B, K]
        loss = F.cross_entropy(logits.float(), y)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def try_batch(self, batch: int) -> Optional[BaseException]:
        """One step at ``batch`` (not timed); the exception if it failed, with the memory it held released."""
        def attempt() -> None:
            x, y = self.inputs(batch)
            self.step(x, y)
            sync(self.device)
        try:
            attempt()
            return None
        except Exception as exc:  # noqa: BLE001 - OOM and kin: the size does not fit
            err = exc
        # the traceback holds attempt()'s frame (input, graph): drop it before freeing the cache
        err.__traceback__ = None
        self.optimizer.zero_grad(set_to_none=True)
        free(self.device)
        return err

    def close(self) -> None:
        del self.forward, self.model, self.optimizer
        if hasattr(torch, "_dynamo"):
            torch._dynamo.reset()
        free(self.device)


def time_steps(bench: Bench, batch: int, warmup: int, steps: int, deadline: float) -> dict:
    x, y = bench.inputs(batch)
    for _ in range(warmup):
        bench.step(x, y)
    sync(bench.device)
    if bench.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(bench.device)
    times: list[float] = []
    for _ in range(steps):
        if times and time.monotonic() > deadline:
            break
        sync(bench.device)
        t0 = time.perf_counter()
        bench.step(x, y)
        sync(bench.device)
        times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated(bench.device) / 2**30 if bench.device.type == "cuda" else None
    del x, y
    return {"step_times_s": [sig(t) for t in times], "peak_mem_gb": None if peak is None else round(peak, 3)}


def search_max_batch(bench: Bench, fits: int, fails: Optional[int], limit: int, deadline: float) -> dict:
    """Largest batch <= limit that fits, knowing ``fits`` (0: none known) and ``fails`` (None: none known):
    doubling from ``fits`` while nothing has failed, then bisection. Returns max_batch, whether it is exact,
    the tries and the first failure's error."""
    tries: list[list] = []
    first_error = None
    status = "exact"
    while True:
        if fails is None:
            if fits >= limit:
                status = "limit"
                break
            nxt = min(max(2 * fits, 1), limit)
        else:
            if fails - fits <= 1:
                break
            nxt = (fits + fails) // 2
        if time.monotonic() > deadline:
            status = "time_limit"
            break
        t0 = time.perf_counter()
        err = bench.try_batch(nxt)
        tries.append([nxt, err is None, round(time.perf_counter() - t0, 2)])
        if err is None:
            fits = nxt
        else:
            fails = nxt
            if first_error is None:
                first_error = short(err)
            if not is_oom(err):
                status = "non_oom_error"  # a size limit other than memory (e.g. 32-bit indexing): still a bound
    return {"max_batch": fits or None, "max_batch_status": status, "max_batch_first_fail": fails,
            "max_batch_tries": tries, "max_batch_error": first_error}


def versions(device: torch.device) -> dict:
    return {"torch": torch.__version__, "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
            "tf32_matmul": torch.backends.cuda.matmul.allow_tf32, "tf32_cudnn": torch.backends.cudnn.allow_tf32}


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def run_case(case: Case, args: argparse.Namespace, device: torch.device, deadline: float,
             search_deadline: Callable[[], float]) -> dict:
    record: dict = {"preset": case.preset, "device": device_name(device), "dtype": args.dtype, "ddp": False}
    bench = None
    try:
        overrides = list(args.set)
        if case.activation_checkpointing is not None:
            overrides.append(f"train.activation_checkpointing={str(case.activation_checkpointing).lower()}")
        cfg = load_config(case.preset.replace("+", ","), overrides)
        batch = case.batch or cfg.data.batch_size
        d = cfg.data
        macs = summarize_config(cfg).macs  # forward multiply-adds per clip (meta device)
        flops_per_clip = 3 * 2 * macs
        on_gpu = device.type == "cuda"
        peak = peak_tflops_for(record["device"], args.dtype, args.peak_tflops) if on_gpu or args.peak_tflops else None
        record.update(batch=batch, clip=[d.frames, d.crop_size, d.crop_size],
                      num_classes=cfg.model.num_classes or SUMMARY_CLASSES,
                      channels_last=args.channels_last, compile=args.compile,
                      activation_checkpointing=cfg.train.activation_checkpointing, freeze_bn=cfg.train.freeze_bn,
                      macs_per_clip=macs, train_flops_per_clip=flops_per_clip, peak_tflops=peak,
                      steps=args.steps, warmup=args.warmup, **versions(device))
        if time.monotonic() > deadline:
            record["skipped"] = "time limit"
            return record
        t0 = time.perf_counter()
        bench = Bench(cfg, device, bf16=args.dtype == "bfloat16", channels_last=args.channels_last,
                      compile=args.compile)
        fits, fails = 0, None
        try:
            timing = time_steps(bench, batch, args.warmup, args.steps, deadline)
        except Exception as exc:  # noqa: BLE001
            exc.__traceback__ = None
            record["error"] = short(exc)
            record["oom"] = is_oom(exc)
            bench.optimizer.zero_grad(set_to_none=True)
            free(device)
            fails = batch
        else:
            fits = batch
            step_s = statistics.median(timing["step_times_s"])
            clips = batch / step_s
            tflops = flops_per_clip * clips / 1e12
            record.update(step_s=sig(step_s), clips_per_s=sig(clips), tflops=sig(tflops),
                          mfu=sig(tflops / peak) if peak else None, steps_timed=len(timing["step_times_s"]),
                          **timing)
        if case.search and ("error" not in record or record.get("oom")):
            record.update(max_batch_limit=case.search_limit,
                          **search_max_batch(bench, fits, fails, case.search_limit, search_deadline()))
        else:
            record.update(max_batch=None, max_batch_status="not searched")
        record["case_s"] = round(time.perf_counter() - t0, 2)
    except Exception as exc:  # noqa: BLE001 - one case's failure is a record, not the end of the run
        record["error"] = short(exc)
        record["traceback"] = traceback.format_exc(limit=-4)[-1500:]
    finally:
        if bench is not None:
            try:
                bench.close()
            except Exception:  # noqa: BLE001
                pass
        free(device)
    return record


def summary_line(records: list[dict], t_start: float, **extra) -> dict:
    keys = ("preset", "batch", "dtype", "activation_checkpointing", "clips_per_s", "step_s", "tflops", "mfu",
            "peak_mem_gb", "max_batch", "max_batch_status", "error", "skipped")
    return {"summary": [{k: r[k] for k in keys if k in r} for r in records],
            "device": records[0]["device"] if records else None, "elapsed_s": round(time.monotonic() - t_start, 1),
            **extra}


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--preset", action="append", default=[],
                   help="preset (repeatable, or a comma list; '+' joins overlays); default nl_i3d_r50_32f")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="dotted config override for every preset (repeatable), e.g. data.crop_size=160")
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=["bfloat16", "float32"],
                   help="bfloat16: autocast as training on GPU (default on cuda); float32 default on cpu")
    p.add_argument("--batch", type=int, help="per-device batch (default: the preset's data.batch_size)")
    p.add_argument("--steps", type=int, default=10, help="timed steps (default 10)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (default 3)")
    p.add_argument("--channels-last", action="store_true",
                   help="model and input in channels_last_3d (what train.channels_last does)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the model (what train.compile does; no DDP here)")
    p.add_argument("--activation-checkpointing", action=argparse.BooleanOptionalAction, default=None,
                   help="force activation checkpointing on/off (default: the preset's)")
    p.add_argument("--max-batch", action=argparse.BooleanOptionalAction, default=None,
                   help="search the largest per-device batch that fits (default: on cuda yes, on cpu no)")
    p.add_argument("--max-batch-limit", type=int, default=64, help="cap of the search (default 64)")
    p.add_argument("--time-limit-s", type=float, help="start nothing new after this many seconds")
    p.add_argument("--peak-tflops", type=float, help="peak TFLOPS for mfu (default: by device name, bf16 only)")
    p.add_argument("--quick", action="store_true",
                   help="nl_i3d_r50_32f b8 + nl_i3d_r50_128f b2 (checkpointing), bf16, max-batch searches")
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is available")
    if args.quick:
        if args.device != "cuda":
            p.error("--quick sizes real R50 presets for a GPU; on the CPU use e.g. --preset demo")
        if args.preset or args.batch:
            p.error("--quick sets the presets and batches itself")
        args.steps, args.warmup = QUICK_STEPS, QUICK_WARMUP
        if args.time_limit_s is None:
            args.time_limit_s = QUICK_TIME_LIMIT_S
    if args.max_batch is None:
        args.max_batch = args.device == "cuda"
    args.dtype = args.dtype or ("bfloat16" if args.device == "cuda" else "float32")
    if args.steps < 1 or args.warmup < 0 or (args.batch is not None and args.batch < 1) or args.max_batch_limit < 1:
        p.error("--steps and --batch must be >= 1, --warmup >= 0, --max-batch-limit >= 1")
    if args.compile:
        args.warmup = max(args.warmup, 1)  # the compilation is not a step to time
    return args


def cases_of(args: argparse.Namespace) -> list[Case]:
    if args.quick:
        return [Case(p, b, ac, True, cap) for p, b, ac, cap in QUICK_CASES]
    names = [n.strip() for item in (args.preset or ["nl_i3d_r50_32f"]) for n in item.split(",") if n.strip()]
    return [Case(n, args.batch, args.activation_checkpointing, args.max_batch, args.max_batch_limit) for n in names]


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    t_start = time.monotonic()
    deadline = t_start + args.time_limit_s if args.time_limit_s else math.inf
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True

    def on_term(signum, frame):
        raise Terminated()
    signal.signal(signal.SIGTERM, on_term)

    cases, records, extra = cases_of(args), [], {}
    try:
        for i, case in enumerate(cases):
            left = len(cases) - i

            def search_deadline(left=left) -> float:  # this case's share of the time left for the cases to come
                now = time.monotonic()
                return now + (deadline - now) / left if deadline != math.inf else math.inf
            record = run_case(case, args, device, deadline, search_deadline)
            records.append(record)
            print(json.dumps(record), flush=True)
    except (Terminated, KeyboardInterrupt) as exc:
        extra["terminated"] = type(exc).__name__
    print(json.dumps(summary_line(records, t_start, **extra)), flush=True)
    failed = any("error" in r for r in records) or bool(extra)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
