"""Generate the synthetic Kinetics-like dataset: real H.264 .mp4 files + official-format CSVs.

    python jobs/make_synthetic.py --out /data/synthetic
    python jobs/make_synthetic.py --out s3://my-bucket/synthetic --classes 10 --per-class 100 \
        --val-per-class 20 --seed 1
    python jobs/make_synthetic.py --out /data/longrange --preset longrange  # data.synthetic=longrange's set

Classes differ only by motion over time (see nlray/data/synthetic.py); in the longrange preset, by whether
two far-apart objects, one after the other, move the same way. The layout is the official
Kinetics one, so the result feeds ``jobs/prepare_kinetics.py --root`` and ``data.root`` directly.
Prints one JSON line: {"out", "videos", "seconds"}.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nlray.data.synthetic import make_dataset  # noqa: E402
from nlray.data.synthetic_spec import CLASSES, DEMO_SPEC, LONGRANGE_CLASSES, SPECS, plan_videos  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--out", required=True, help="dataset root: local path, file:// or s3://bucket/prefix")
    p.add_argument("--preset", choices=tuple(SPECS), default="demo",
                   help="start from the set data.synthetic names: demo (the embedded default's), tiny (tests) "
                        "or longrange (a relation of two far-apart motions)")
    p.add_argument("--classes", type=int, help=f"number of classes, the first N of {len(CLASSES)}: "
                                               f"{', '.join(CLASSES)} (longrange: of {', '.join(LONGRANGE_CLASSES)})")
    p.add_argument("--per-class", type=int, help=f"train videos per class (demo: {DEMO_SPEC.per_class})")
    p.add_argument("--val-per-class", type=int, help="validation videos per class")
    p.add_argument("--seed", type=int, help="random seed (same seed, same dataset)")
    p.add_argument("--width", type=int, nargs=2, metavar=("MIN", "MAX"), help="frame width range")
    p.add_argument("--fps", type=int, nargs="+", help="frame rates to draw from, e.g. 24 25 30")
    p.add_argument("--duration", type=float, nargs=2, metavar=("MIN", "MAX"), help="seconds")
    p.add_argument("--gop", type=int, help="keyframe interval of the encoder (default 250, like raw Kinetics)")
    p.add_argument("--processes", type=int, default=2, help="encoder processes (default 2)")
    p.add_argument("--endpoint-url", default="", help="S3-compatible endpoint (else AWS_ENDPOINT_URL[_S3])")
    p.add_argument("--overwrite", action="store_true", help="replace files already at --out")
    return p.parse_args(argv)


def build_spec(args: argparse.Namespace):
    spec = SPECS[args.preset]
    family = LONGRANGE_CLASSES if spec.classes[0] in LONGRANGE_CLASSES else CLASSES
    changes = {}
    if args.classes is not None:
        if not 1 <= args.classes <= len(family):
            raise SystemExit(f"--classes {args.classes}: choose 1..{len(family)} for --preset {args.preset}")
        changes["classes"] = family[:args.classes]
    for arg, field in (("per_class", "per_class"), ("val_per_class", "val_per_class"),
                       ("seed", "seed"), ("gop", "gop")):
        if getattr(args, arg) is not None:
            changes[field] = getattr(args, arg)
    if args.width:
        changes["width_range"] = tuple(args.width)
    if args.fps:
        changes["fps_choices"] = tuple(args.fps)
    if args.duration:
        changes["duration_range"] = tuple(args.duration)
    try:
        return dataclasses.replace(spec, **changes)
    except ValueError as exc:
        raise SystemExit(f"bad dataset options: {exc}") from None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    spec = build_spec(args)
    start = time.perf_counter()
    make_dataset(args.out, spec, endpoint_url=args.endpoint_url, processes=args.processes,
                 overwrite=args.overwrite)
    print(json.dumps({"out": args.out, "videos": len(plan_videos(spec)),
                      "classes": list(spec.classes),
                      "seconds": round(time.perf_counter() - start, 2)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
