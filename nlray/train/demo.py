"""The embedded default: `python jobs/train_longclip.py` with no arguments.

Synthetic Kinetics-like videos (generated once into the cache) -> a short 32-frame-style stage (preset
`demo`) -> long-clip fine-tuning from that model (preset `demo_128f`, --init-from the first run), 2 Ray Train
workers on a local Ray, MLflow in ./mlflow.db. Prints both runs' validation results and how to see them.
"""
from __future__ import annotations

from typing import Sequence

from nlray.config import Config, load_config
from nlray.secrets import redact
from nlray.tracking import resolve_uri
from nlray.train.trainer import fit


def stage_configs(extra1: Sequence[str] = (), extra2: Sequence[str] = ()) -> tuple[Config, Config]:
    short = load_config("demo", ["name=demo-short", *extra1])
    long = load_config("demo_128f", ["name=demo-long", *extra2])
    return short, long


def run_demo(extra1: Sequence[str] = (), extra2: Sequence[str] = ()) -> dict:
    short, long = stage_configs(extra1, extra2)
    first = fit(short)
    long.train.init_from = first["run_id"]
    second = fit(long)
    report(short, first, long, second)
    return {"short": first, "long": second}


def report(short: Config, first: dict, long: Config, second: dict) -> None:
    chance = 1.0 / first["num_classes"]
    print("\nnlray embedded default: done")
    for cfg, res in ((short, first), (long, second)):
        views = f"{cfg.data.eval_num_clips} clips x {cfg.data.eval_num_crops} crops"
        print(f"  {cfg.name:<11} {cfg.data.frames:>3}x{cfg.data.frame_stride} frames, {res['step']} steps: "
              f"val video top-1 {res.get('val/video_top1', float('nan')):.3f} ({views}), "
              f"clip top-1 {res.get('val/clip_top1', float('nan')):.3f}, chance {chance:.3f}; "
              f"MLflow run {res['run_id']}")
    print(f"\nSee the runs: mlflow ui --backend-store-uri {redact(resolve_uri(short.tracking.uri))}  "
          "(then open http://127.0.0.1:5000)")
