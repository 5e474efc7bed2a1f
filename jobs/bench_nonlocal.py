"""Benchmark the shipped non-local operation against the plain formula that materialises N×N'.

    python jobs/bench_nonlocal.py                                   # CPU, float32, every case
    python jobs/bench_nonlocal.py --cases 'embedded_gaussian/128f/res3/*' --repeats 5
    python jobs/bench_nonlocal.py --device cuda --dtype bfloat16

Cases (issue 2 "Benchmark"): the res3 (C=512, 28×28) and res4 (C=1024, 14×14) non-local inputs of
32-frame (T=4) and 128-frame (T=16) R50 clips, batch 1, subsampling on, each instantiation, at two
levels: ``core`` (θ, φ, g given -> y) and ``block`` (convs, pooling, W_z, BN, residual). Each step is
forward + backward. Each case runs in subprocesses of its own: one times both implementations
alternately (a warm-up each, then --repeats rounds; medians), one per implementation measures the
peak memory of a step: on CUDA torch.cuda.max_memory_allocated above what was allocated before; on
the CPU the growth of the process's peak RSS (VmHWM, reset through /proc/self/clear_refs before the
step, with glibc returning freed blocks to the OS) above the RSS before the step.

Prints one JSON object per case on stdout: name, speedup (plain time / shipped time),
memory_saving (plain peak / shipped peak), the raw times and peaks, and for the issue's targets
(CPU, float32) whether they were met.
"""
from __future__ import annotations

import argparse
import fnmatch
import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Optional

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import torch  # noqa: E402

from nlray.choices import INSTANTIATIONS  # noqa: E402
from nlray.models.nonlocal_block import NonLocalBlock, nonlocal_core  # noqa: E402
from nlray.models.reference import reference_block, reference_core  # noqa: E402

FRAMES = (32, 128)  # clip lengths; the non-local stages see T = frames / 8
STAGE_SHAPES = {"res3": (512, 28), "res4": (1024, 14), "tiny": (16, 8)}  # channels, H = W ("tiny": smoke)
LEVELS = ("core", "block")
DEFAULT_CASES = "*/*/res3/*,*/*/res4/*"
# Issue 2's targets (CPU, float32, 128-frame res3): name -> {metric: minimum}
TARGETS = {
    "embedded_gaussian/128f/res3/core": {"memory_saving": 5.0, "speedup": 2.0},
    "embedded_gaussian/128f/res3/block": {"memory_saving": 3.0},
    "dot_product/128f/res3/core": {"speedup": 10.0},
}
CPU_MEMORY_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072"}


def case_names() -> list[str]:
    return [f"{i}/{f}f/{s}/{lvl}" for i in INSTANTIATIONS for f in FRAMES for s in STAGE_SHAPES for lvl in LEVELS]


def select(patterns: str) -> list[str]:
    pats = [p.strip() for p in patterns.split(",") if p.strip()]
    names = [n for n in case_names() if any(fnmatch.fnmatchcase(n, p) for p in pats)]
    if not names:
        raise SystemExit(f"--cases {patterns!r} matches no case; cases look like {case_names()[0]!r} "
                         f"(instantiation/{{32,128}}f/{{res3,res4,tiny}}/{{core,block}})")
    return names


def shape_of(name: str) -> dict:
    inst, frames, stage, level = name.split("/")
    c, hw = STAGE_SHAPES[stage]
    t = int(frames[:-1]) // 8
    return {"C": c, "T": t, "H": hw, "W": hw, "N": t * hw * hw, "N_prime": t * ((hw + 1) // 2) ** 2}


# --- worker side: one process, one case -------------------------------------------------------------

def make_step(name: str, impl: str, device: str, dtype: str) -> Callable[[], None]:
    """forward + backward of one implementation on the case's inputs (fixed seed: same for both)."""
    inst, _, _, level = name.split("/")
    s = shape_of(name)
    torch.manual_seed(0)
    block = NonLocalBlock(s["C"], instantiation=inst).to(device=device, dtype=getattr(torch, dtype))
    with torch.no_grad():
        block.bn.weight.normal_()  # a trained-looking block: the zero-init BN would cut the gradients
    x = torch.randn(1, s["C"], s["T"], s["H"], s["W"], device=device, dtype=block.bn.weight.dtype)
    if level == "block":
        leaves = [x.requires_grad_(), *block.parameters()]
        run = (lambda: block(x)) if impl == "shipped" else (lambda: reference_block(block, x))
    else:
        with torch.no_grad():
            theta, phi, g = (t.detach().requires_grad_() for t in block.embed(x))  # the block's layout
        leaves = [theta, phi, g] + ([block.concat_weight] if block.concat_weight is not None else [])
        core = nonlocal_core if impl == "shipped" else reference_core
        kw = dict(instantiation=inst, scale=block.scale, concat_weight=block.concat_weight)
        run = lambda: core(theta, phi, g, **kw)  # noqa: E731
    with torch.no_grad():
        upstream = torch.randn_like(run())

    def step() -> None:
        run().backward(upstream)
        for leaf in leaves:
            leaf.grad = None
    return step


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_worker(name: str, device: str, dtype: str, repeats: int) -> dict:
    steps = {impl: make_step(name, impl, device, dtype) for impl in ("shipped", "plain")}
    times: dict[str, list[float]] = {impl: [] for impl in steps}
    for step in steps.values():  # warm-up
        step()
    for _ in range(repeats):  # alternate, so that a busy moment hits both
        for impl, step in steps.items():
            _sync(device)
            start = time.perf_counter()
            step()
            _sync(device)
            times[impl].append(time.perf_counter() - start)
    return {f"{impl}_times_s": [round(t, 5) for t in ts] for impl, ts in times.items()}


def _proc_status() -> dict[str, int]:
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                out[line.split(":")[0]] = int(line.split()[1]) * 1024
    return out


def _cpu_peak(step: Callable[[], None], repeats: int) -> tuple[list[int], str]:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:  # no resettable peak: measure the very first step only
        before = _proc_status()["VmRSS"] if os.path.exists("/proc/self/status") else 0
        step()
        return [resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before], "ru_maxrss-first-step"
    step()  # warm-up
    peaks = []
    for _ in range(repeats):
        gc.collect()
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # VmHWM := VmRSS
        before = _proc_status()["VmRSS"]
        step()
        peaks.append(_proc_status()["VmHWM"] - before)
    return peaks, "rss-hwm"


def memory_worker(name: str, impl: str, device: str, dtype: str, repeats: int) -> dict:
    step = make_step(name, impl, device, dtype)
    if device != "cuda":
        peaks, method = _cpu_peak(step, repeats)
        return {"peaks": peaks, "method": method}
    step()
    peaks = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        step()
        torch.cuda.synchronize()
        peaks.append(torch.cuda.max_memory_allocated() - before)
    return {"peaks": peaks, "method": "cuda-max-allocated"}


# --- parent side ---------------------------------------------------------------------------------------

def _spawn(args: list[str], env_extra: Optional[dict] = None, timeout: float = 1800) -> dict:
    env = dict(os.environ, **(env_extra or {}))
    proc = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, env=env,
                          timeout=timeout)
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_case(name: str, device: str, dtype: str, repeats: int) -> dict:
    common = ["--device", device, "--dtype", dtype, "--repeats", str(repeats)]
    timing = _spawn(["--worker", "time", "--cases", name, *common])
    mem_env = CPU_MEMORY_ENV if device == "cpu" else None
    mem = {impl: _spawn(["--worker", "memory", "--impl", impl, "--cases", name, *common], mem_env)
           for impl in ("shipped", "plain")}
    record = {"name": name, "device": device, "dtype": dtype, **shape_of(name)}
    errors = {k: v["error"] for k, v in (("time", timing), *mem.items()) if "error" in v}
    if errors:
        return {**record, "error": errors}
    t_ship, t_plain = (statistics.median(timing[f"{i}_times_s"]) for i in ("shipped", "plain"))
    m_ship, m_plain = (max(mem[i]["peaks"]) for i in ("shipped", "plain"))
    floor = 4096  # below a page, an RSS figure is noise
    record.update(speedup=round(t_plain / t_ship, 3),
                  memory_saving=round(max(m_plain, floor) / max(m_ship, floor), 3),
                  shipped_time_s=t_ship, plain_time_s=t_plain, **timing,
                  shipped_peak_bytes=m_ship, plain_peak_bytes=m_plain,
                  shipped_peaks_bytes=mem["shipped"]["peaks"], plain_peaks_bytes=mem["plain"]["peaks"],
                  memory_method=mem["shipped"]["method"], repeats=repeats)
    if name in TARGETS and device == "cpu" and dtype == "float32":
        record["targets"] = TARGETS[name]
        record["targets_met"] = all(record[k] >= v for k, v in TARGETS[name].items())
    return record


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float64"])
    p.add_argument("--cases", default=DEFAULT_CASES,
                   help=f"comma-separated glob patterns over case names (default {DEFAULT_CASES!r})")
    p.add_argument("--repeats", type=int, default=3, help="timed / measured steps per implementation")
    p.add_argument("--list", action="store_true", help="print the selected case names and exit")
    p.add_argument("--worker", choices=["time", "memory"], help=argparse.SUPPRESS)
    p.add_argument("--impl", choices=["shipped", "plain"], help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.repeats < 1:
        p.error(f"--repeats={args.repeats} must be >= 1")
    return args


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    if args.worker:  # one case, one measurement, in this process
        name = select(args.cases)[0]
        if args.worker == "time":
            out = time_worker(name, args.device, args.dtype, args.repeats)
        else:
            out = memory_worker(name, args.impl, args.device, args.dtype, args.repeats)
        print(json.dumps(out))
        return 0
    names = select(args.cases)
    if args.list:
        print("\n".join(names))
        return 0
    failed = 0
    for name in names:
        record = run_case(name, args.device, args.dtype, args.repeats)
        failed += "error" in record
        print(json.dumps(record), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
