"""Build the manifest of a Kinetics-style dataset (and optionally probe / transcode its videos).

    python jobs/prepare_kinetics.py --root s3://my-bucket/kinetics400 \
        --out s3://my-bucket/kinetics400/manifest.parquet --probe
    python jobs/prepare_kinetics.py --root s3://my-bucket/kinetics400 \
        --transcode s3://my-bucket/k400-256 --short-side 256 --keyint 32 \
        --out s3://my-bucket/k400-256/manifest.parquet
    ray job submit --working-dir . -- python jobs/prepare_kinetics.py --root ... --out ... --probe

--root is the official layout (annotations/{train,validate,test}.csv + train/ val/ test/ videos,
flat or per class), a folder with `path label` lists (train.txt, val.txt, ...) or one list file.
--out receives the manifest you train on (data.root=...parquet), labels.json and missing.txt
(annotated videos that do not exist: left out, counted on stdout). A row of a list file or an
annotation that names a file outside --root (`..`, an absolute path or URI elsewhere, another
bucket) is refused, never read: counted on stdout and listed in outside_root.txt beside --out,
unless --allow-outside-root (data.allow_outside_root). With --transcode the videos are
re-encoded below OUT_URI (same relative paths, annotations copied) and --out describes the new
copies; failures are listed in transcode_report.csv beside --out. With --probe every video is
opened once in parallel (Ray Data) and the manifest gets status / num_frames / fps / width / height.
--probe and --transcode read and decode each video with PyAV under the per-video limits (the
data.max_* / data.decode_timeout_s defaults, or --max-video-bytes ... --decode-timeout-s; 0: no
limit): a video over one gets its reason (too_large, frame_size, too_many_packets, timeout).

On a cluster, --probe and --transcode run on decode nodes: each actor asks for a unit of nlray_decode
(one per CPU of a decode node) when the cluster has it or its autoscaler can add a node type that carries
it (--decode-resource, NLRAY_DECODE_RESOURCE: "auto"; a name; "" for 1 CPU anywhere). The pool starts with one
actor and grows to --concurrency (default: max_workers x slots of the autoscaler's decode node types,
else the cluster's CPUs now); the actors that do not fit yet make the autoscaler add decode nodes.
Resume: every finished video is logged as it arrives (JSON lines below OUT_URI/.nlray-prepare/ for
--transcode, below the folder of --out for --probe): run the same command again after a failure or a
kill and only the videos not logged yet are done (an output a killed run wrote whole is checked and
kept, not encoded again). Progress: one line every --progress-interval-s (done / failed / remaining,
videos/s, ETA), e.g. "transcode: 1200/246000 done (15 failed, 1000 from an earlier run), 244800
remaining, 8.30 videos/s, ETA 8h11m, 2m24s elapsed".
The last line printed is a JSON summary.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nlray import raycluster  # noqa: E402
from nlray.config import DataConfig  # noqa: E402
from nlray.data import storage  # noqa: E402
from nlray.data.badvideo import VideoLimits  # noqa: E402
from nlray.data.dataset import outside_root_line, scan_dataset  # noqa: E402
from nlray.data.manifest import ManifestError, write_manifest  # noqa: E402
from nlray.data.probe import probe_manifest  # noqa: E402
from nlray.data.storage import StorageError  # noqa: E402
from nlray.data.transcode import transcode_dataset  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--root", required=True, help="dataset root or list file (s3://, file://, path)")
    p.add_argument("--out", required=True, help="manifest to write (.parquet; local or s3://)")
    p.add_argument("--probe", action="store_true", help="open every video; add a status column")
    p.add_argument("--min-frames", type=int, default=1, help="--probe: fewer frames = too_short")
    p.add_argument("--transcode", metavar="OUT_URI", default="",
                   help="re-encode every video to H.264 below OUT_URI (same layout)")
    p.add_argument("--short-side", type=int, default=256, help="--transcode: shorter side (never up)")
    p.add_argument("--keyint", type=int, default=32, help="--transcode: frames between keyframes")
    p.add_argument("--crf", type=int, default=23, help="--transcode: x264 quality (lower = better)")
    p.add_argument("--x264-preset", default="veryfast", help="--transcode: x264 speed preset")
    p.add_argument("--endpoint-url", default="", help="S3-compatible endpoint (else AWS_ENDPOINT_URL[_S3])")
    p.add_argument("--ray-address", default="", help="Ray cluster (default: RAY_ADDRESS or local)")
    p.add_argument("--concurrency", type=int, default=0,
                   help="--probe/--transcode: most actors (0: the autoscaler's decode node types' CPU slots, "
                        "else the cluster's CPUs now)")
    p.add_argument("--decode-resource", default=os.environ.get("NLRAY_DECODE_RESOURCE", "auto"),
                   help="resource each actor asks for: auto (nlray_decode when the cluster has or can add it), "
                        "a name, or '' (default: NLRAY_DECODE_RESOURCE or auto)")
    p.add_argument("--progress-interval-s", type=float, default=30.0,
                   help="--probe/--transcode: seconds between progress lines (0: first and last only)")
    p.add_argument("--flush-s", type=float, default=5.0,
                   help="--probe/--transcode: seconds between writes of the results log (resume)")
    p.add_argument("--allow-outside-root", action="store_true",
                   help="keep list/annotation rows naming files outside --root (data.allow_outside_root)")
    limits = VideoLimits.from_config(DataConfig())  # the data.max_* / data.decode_timeout_s defaults
    p.add_argument("--max-video-bytes", type=int, default=limits.max_bytes,
                   help="--probe/--transcode: bytes read of one video (0: no limit) -> too_large")
    p.add_argument("--max-frame-pixels", type=int, default=limits.max_frame_pixels,
                   help="width x height of a frame (0: no limit) -> frame_size")
    p.add_argument("--max-aspect-ratio", type=float, default=limits.max_aspect_ratio,
                   help="long side / short side (0: no limit) -> frame_size")
    p.add_argument("--max-packets", type=int, default=limits.max_packets,
                   help="packets demuxed from one video (0: no limit) -> too_many_packets")
    p.add_argument("--decode-timeout-s", type=float, default=limits.timeout_s,
                   help="seconds to read, probe or transcode one video (0: no limit) -> timeout")
    args = p.parse_args(argv)
    if not args.out.endswith(".parquet"):
        p.error(f"--out {args.out!r} must end with .parquet")
    if args.short_side < 2 or args.keyint < 1 or args.min_frames < 0:
        p.error(f"--short-side {args.short_side} must be >= 2, --keyint {args.keyint} >= 1, "
                f"--min-frames {args.min_frames} >= 0")
    for flag in ("max_video_bytes", "max_frame_pixels", "max_aspect_ratio", "max_packets", "decode_timeout_s"):
        if getattr(args, flag) < 0:
            p.error(f"--{flag.replace('_', '-')} {getattr(args, flag)} must be >= 0 (0: no limit)")
    if args.concurrency < 0 or args.progress_interval_s < 0 or args.flush_s < 0:
        p.error("--concurrency, --progress-interval-s and --flush-s must be >= 0")
    if 0 < args.max_aspect_ratio < 1:
        p.error(f"--max-aspect-ratio {args.max_aspect_ratio} must be >= 1 (long side / short side) or 0")
    return args


def video_limits(args: argparse.Namespace) -> VideoLimits:
    """The per-video limits of the command line (0: none)."""
    return VideoLimits(max_bytes=args.max_video_bytes or None, max_frame_pixels=args.max_frame_pixels or None,
                       max_aspect_ratio=args.max_aspect_ratio or None, max_packets=args.max_packets or None,
                       timeout_s=args.decode_timeout_s or None)


@contextmanager
def listing_once():
    """Within it, a listing of a folder (``storage.list_files``) is made once: ``scan_dataset`` lists the
    root and ``copy_annotations`` reuses that listing (a 266k-video root costs a listing ~10 s on S3).
    Yields the dict of listings made ({(uri, suffixes, endpoint): [(uri, size)]})."""
    real = storage.list_files
    made: dict = {}

    def once(uri, *, suffixes=storage.VIDEO_SUFFIXES, endpoint_url=""):
        key = (uri, None if suffixes is None else tuple(suffixes), endpoint_url)
        if key not in made:
            made[key] = real(uri, suffixes=suffixes, endpoint_url=endpoint_url)
        return list(made[key])

    storage.list_files = once
    try:
        yield made
    finally:
        storage.list_files = real


def transcode(args: argparse.Namespace, df, listings: dict):
    """Re-encode below --transcode; returns the new manifest and the failed rows."""
    raycluster.connect(args.ray_address)
    new, report = transcode_dataset(df, root=args.root, out_root=args.transcode,
                                    short_side=args.short_side, keyint=args.keyint, crf=args.crf,
                                    preset=args.x264_preset, endpoint_url=args.endpoint_url,
                                    concurrency=args.concurrency or None, limits=video_limits(args),
                                    decode_resource=args.decode_resource,
                                    progress_interval_s=args.progress_interval_s, flush_s=args.flush_s,
                                    root_listing=listings.get((args.root, None, args.endpoint_url)))
    failed = report[report["status"] != "ok"]
    folder = args.out.rsplit("/", 1)[0] if "/" in args.out else "."
    buf = io.StringIO()
    failed.to_csv(buf, index=False)
    storage.write_bytes(storage.join(folder, "transcode_report.csv"), buf.getvalue().encode(),
                        endpoint_url=args.endpoint_url)
    return new, failed


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    with listing_once() as listings:
        df, labels, missing, outside = scan_dataset(args.root, endpoint_url=args.endpoint_url,
                                                    allow_outside_root=args.allow_outside_root)
    print(f"{len(df)} videos, {len(labels)} classes, {len(missing)} annotated videos missing, "
          f"{len(outside)} rows outside the root refused")
    if outside:
        print(outside_root_line(args.root, outside))
    summary: dict = {"root": args.root, "videos": len(df), "classes": len(labels),
                     "missing": len(missing), "outside_root": len(outside),
                     "splits": df["split"].value_counts().to_dict()}
    if args.transcode:
        df, failed = transcode(args, df, listings)
        print(f"transcoded {len(df)} videos to {args.transcode}; {len(failed)} failed")
        summary.update(transcoded=len(df), transcode_failed=failed["status"].value_counts().to_dict())
    if args.probe:
        raycluster.connect(args.ray_address)
        folder = args.out.rsplit("/", 1)[0] if "/" in args.out else "."
        df = probe_manifest(df, endpoint_url=args.endpoint_url, min_frames=args.min_frames,
                            concurrency=args.concurrency or None, limits=video_limits(args),
                            decode_resource=args.decode_resource, results_folder=folder,
                            progress_interval_s=args.progress_interval_s, flush_s=args.flush_s)
        summary["status"] = df["status"].value_counts().to_dict()
        print("probe: " + ", ".join(f"{k} {v}" for k, v in summary["status"].items()))
    written = write_manifest(df, labels, args.out, missing=missing, outside_root=outside,
                             endpoint_url=args.endpoint_url)
    if args.transcode:  # the new root describes itself too
        write_manifest(df, labels, storage.join(args.transcode, "manifest.parquet"),
                       endpoint_url=args.endpoint_url)
    if missing:
        print(f"missing videos listed in {written['missing']}")
    if outside:
        print(f"rows outside the root listed in {written['outside_root']}")
    summary.update(files=written, seconds=round(time.perf_counter() - start, 2))
    print(json.dumps(summary))
    return 0


def cli(argv: list[str] | None = None) -> int:
    """``main`` with bad input (a missing root, no access, a malformed CSV) as one clear line."""
    try:
        return main(argv)
    except (StorageError, ManifestError) as exc:
        print(f"prepare_kinetics: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(cli())
