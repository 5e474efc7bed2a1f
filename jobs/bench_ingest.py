"""Training clips delivered per second end to end: S3 endpoint -> Ray Data decoders -> consumer.

    python jobs/bench_ingest.py            # full: 1 and 2 decoder CPUs, ~3-5 minutes on 2 cores
    python jobs/bench_ingest.py --quick    # smoke: tiny videos, a few clips

What runs (all real, on this machine):
- a ``moto_server`` S3 endpoint on 127.0.0.1, started here and stopped by its pid;
- Kinetics-like videos in the prepared form (shorter side 256, keyframe every 32, H.264 as
  ``nlray.data.transcode`` writes them) uploaded to it, listed in a manifest;
- ``build_train_dataset`` (32x2 clips, shorter side in [256, 320], 224 crop, flip) with N decoder
  actors of 1 CPU each, read by ``iter_torch_batches`` on the driver, as a trainer would;
- baseline: a torch ``DataLoader`` with N worker processes whose ``__getitem__`` does exactly the same
  work (``ClipDecoder.clip``: fetch from S3, sample, decode, crop, flip), same batch size.

Each decoded batch is stamped in the decoder with the wall clock and the decoder process's CPU
time. Rate (``clips_per_s``) = clips / seconds from the first clip decoded to the last clip
delivered to the consumer: steady state, start-up of actors or workers excluded (reported as
``first_batch_s``, time to the first delivered batch; ``total_clips_per_s`` includes it). Also
``produced_clips_per_s`` (first to last clip decoded) and ``decoder_clips_per_cpu_s`` (the decode
cost itself, the same work on both sides: a gap with equal CPU cost is scheduling, not decoding).
The load average of the machine is recorded (other jobs share its cores).
Each configuration runs ``--repeats`` times, alternating Ray Data and DataLoader; the best run of
each is compared (the machine is shared).
Records: ``ingest/{1,2}cpu/vs_dataloader`` (Ray Data / DataLoader), ``ingest/ray_data/scaling_1to2``
and ``ingest/dataloader/scaling_1to2`` (speedup = rate(2) / rate(1), efficiency = speedup / 2).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import pandas as pd
import ray
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_decode import render_frames  # noqa: E402
from nlray.config import DataConfig  # noqa: E402
from nlray.data import storage, transcode  # noqa: E402
from nlray.data.clips import ClipDecoder  # noqa: E402
from nlray.data.decode import BACKENDS, DEFAULT_BACKEND  # noqa: E402
from nlray.data.pipeline import build_train_dataset  # noqa: E402
from nlray.testing.servers import start_moto, stop  # noqa: E402

FAKE_AWS = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"}


# ------------------------------------------------------------------------------- S3 endpoint


def make_videos(bucket: str, *, count: int, width: int, height: int, seconds: float, tmp: Path) -> list[str]:
    """Prepared-form videos (transcode's encoder and keyframe interval) uploaded; their URIs."""
    uris = []
    for v in range(count):
        path = tmp / f"v{v}.mp4"
        transcode.encode_h264(render_frames(width=width, height=height, num_frames=int(30 * seconds), seed=v),
                              str(path), width=width, height=height, fps=30, keyint=transcode.DEFAULT_KEYINT)
        uri = f"s3://{bucket}/train/v{v}.mp4"
        storage.write_bytes(uri, path.read_bytes())
        uris.append(uri)
    return uris


# ---------------------------------------------------------------------------------- consumers


def _stamp(n: int) -> dict:
    """When (wall clock) and after how much CPU of this decoder process n clips were finished."""
    return {"t_done": np.full(n, time.time()), "cpu_s": np.full(n, time.process_time()),
            "pid": np.full(n, os.getpid(), np.int64)}


class TimedClipDecoder(ClipDecoder):
    """ClipDecoder whose batches carry _stamp columns (for the decoders' own rate and CPU cost)."""

    def __call__(self, batch: dict) -> Iterator[dict]:
        for out in super().__call__(batch):
            yield {**out, **_stamp(len(out["label"]))}


class ClipDataset:
    """torch map-style dataset doing ClipDecoder's work per item (decoder made in each worker)."""

    def __init__(self, uris: list[str], labels: list[int], decoder_kwargs: dict):
        self.uris, self.labels, self.kwargs = uris, labels, decoder_kwargs
        self._decoder: Optional[ClipDecoder] = None

    def __len__(self) -> int:
        return len(self.uris)

    def __getitem__(self, i: int) -> dict:
        if self._decoder is None:  # after the fork: each worker its own generator
            self._decoder = ClipDecoder(**self.kwargs)
        clip = self._decoder.clip(self.uris[i])
        return {"video": clip, "label": self.labels[i], **{k: v[0] for k, v in _stamp(1).items()}}


def _decoder_stats(t_done: np.ndarray, cpu_s: np.ndarray, pid: np.ndarray) -> dict:
    """Clips/s the decoders produced (first to last clip) and clips per CPU-second of a decoder."""
    cpu_per_clip = []
    for p in np.unique(pid):
        mine = pid == p
        if mine.sum() > 1:
            cpu_per_clip.append(np.ptp(cpu_s[mine]) / (mine.sum() - 1))
    span = np.ptp(t_done)
    return {"produced_rate": (len(t_done) - 1) / span if span > 0 else float("nan"),
            "clips_per_cpu_s": 1 / float(np.mean(cpu_per_clip)) if cpu_per_clip else float("nan")}


def timed_epoch(batches) -> dict:
    """Consume an iterator of batches: clips/s from the first clip decoded to the last one delivered."""
    t0 = time.time()
    first_t, n, stamps = None, 0, []
    for b in batches:
        assert b["video"].dtype.itemsize == 1  # uint8 travelled
        stamps.append([np.asarray(b[c]) for c in ("t_done", "cpu_s", "pid")])
        n += len(b["label"])
        first_t = first_t or time.time()
    end = time.time()
    t_done, cpu_s, pid = (np.concatenate(col) for col in zip(*stamps))
    # Not "first batch delivered to last": a pipeline can hold clips back and then deliver them at
    # once, which would overstate its rate. Decoding starts after start-up (first_decoded_s).
    return {"clips": n, "first_batch_s": round(first_t - t0, 2),
            "first_decoded_s": round(float(t_done.min()) - t0, 2),
            "rate": n / max(end - float(t_done.min()), 1e-9), "total_rate": n / (end - t0),
            **_decoder_stats(t_done, cpu_s, pid)}


def ray_epoch(df, cfg: DataConfig, batch: int) -> dict:
    ds = build_train_dataset(df, cfg, run_name="bench_ingest", decoder=TimedClipDecoder)
    return timed_epoch(ds.iter_torch_batches(batch_size=batch))


def loader_epoch(df, cfg: DataConfig, batch: int, workers: int) -> dict:
    kwargs = dict(frames=cfg.frames, stride=cfg.frame_stride, short_side=tuple(cfg.train_short_side),
                  crop_size=cfg.crop_size, backend=cfg.backend, log_name="unused")
    data = ClipDataset(df.uri.tolist(), df.label_id.tolist(), kwargs)
    # spawn, not fork: a child forked from a process running Ray's threads can deadlock (seen here)
    loader = torch.utils.data.DataLoader(data, batch_size=batch, shuffle=True, num_workers=workers,
                                         prefetch_factor=2, multiprocessing_context="spawn")
    return timed_epoch(loader)


# ------------------------------------------------------------------------------------- main


def emit(name: str, a: dict, b: dict, **extra) -> dict:
    rec = {"name": name, "speedup": round(a["rate"] / b["rate"], 3), "clips_per_s": round(a["rate"], 2),
           "baseline_clips_per_s": round(b["rate"], 2),
           "produced_clips_per_s": round(a["produced_rate"], 2),
           "baseline_produced_clips_per_s": round(b["produced_rate"], 2),
           "decoder_clips_per_cpu_s": round(a["clips_per_cpu_s"], 2),
           "baseline_decoder_clips_per_cpu_s": round(b["clips_per_cpu_s"], 2),
           "total_clips_per_s": round(a["total_rate"], 2),
           "baseline_total_clips_per_s": round(b["total_rate"], 2), **extra}
    print(json.dumps(rec), flush=True)
    return rec


def measure(df, url: str, args: argparse.Namespace, sides: tuple) -> dict:
    """{(kind, cpus): best epoch} for kind in ray / loader and 1 / 2 decoder CPUs, alternating."""
    best: dict = {}
    for _ in range(args.repeats):
        for n in (1, 2):
            cfg = DataConfig(frames=32, frame_stride=2, train_short_side=sides[0], crop_size=sides[1],
                             decode_actors=n, decode_actors_max=0, decode_cpus=1.0, decode_batch=2, s3_endpoint_url=url,
                             backend=args.backend)
            for kind in ("ray", "loader"):
                r = ray_epoch(df, cfg, args.batch) if kind == "ray" else loader_epoch(df, cfg, args.batch, n)
                print(f"# {kind} {n} cpu: {r}", file=sys.stderr, flush=True)
                if (kind, n) not in best or r["rate"] > best[kind, n]["rate"]:
                    best[kind, n] = r
    return best


def records(best: dict, info: dict) -> list[dict]:
    out = [emit(f"ingest/{n}cpu/vs_dataloader", best["ray", n], best["loader", n],
                first_batch_s=best["ray", n]["first_batch_s"],
                baseline_first_batch_s=best["loader", n]["first_batch_s"], **info) for n in (1, 2)]
    for kind, label in (("ray", "ray_data"), ("loader", "dataloader")):
        two, one = best[kind, 2], best[kind, 1]
        out.append(emit(f"ingest/{label}/scaling_1to2", two, one,
                        efficiency=round(two["rate"] / one["rate"] / 2, 3), **info))
    return out


def run(args: argparse.Namespace) -> list[dict]:
    import boto3

    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp(prefix="bench_ingest_"))
    proc, url = start_moto(tmp / "moto.log")
    os.environ.update(FAKE_AWS, AWS_ENDPOINT_URL=url)  # DataLoader workers and Ray workers inherit
    try:
        boto3.client("s3", endpoint_url=url).create_bucket(Bucket="bench")
        geo = dict(width=160, height=96, seconds=2) if args.quick else dict(width=456, height=256, seconds=10)
        uris = make_videos("bench", count=args.videos, tmp=tmp, **geo)
        rows = [uris[i % len(uris)] for i in range(args.clips)]  # an epoch of --clips rows
        df = pd.DataFrame({"uri": rows, "label_id": [i % 4 for i in range(len(rows))], "split": "train"})
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {**FAKE_AWS, "AWS_ENDPOINT_URL": url}})
        load0 = os.getloadavg()[0]
        best = measure(df, url, args, ([96, 112], 80) if args.quick else ([256, 320], 224))
        info = {"clips_per_epoch": len(df), "batch": args.batch, "videos": args.videos,
                "loadavg_1min_start_end": [round(load0, 1), round(os.getloadavg()[0], 1)],
                "video": f"{geo['width']}x{geo['height']} 30fps {geo['seconds']}s keyint32",
                "repeats": args.repeats, "host_cpus": os.cpu_count(), "backend": args.backend}
        return records(best, info)
    finally:
        if ray.is_initialized():
            ray.shutdown()
        stop(proc)
        shutil.rmtree(tmp, ignore_errors=True)


def _exit_on_sigterm(signum, frame):  # so that `finally` stops the servers we started
    raise SystemExit(128 + signum)


def main(argv: Optional[list[str]] = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny videos, few clips, one repeat (smoke test)")
    p.add_argument("--videos", type=int, default=None, help="distinct videos (default 6; quick 2)")
    p.add_argument("--clips", type=int, default=None, help="clips per epoch (default 96; quick 8)")
    p.add_argument("--batch", type=int, default=8, help="clips per consumer batch")
    p.add_argument("--backend", default=DEFAULT_BACKEND, choices=BACKENDS,
                   help="decoder backend (both sides)")
    p.add_argument("--repeats", type=int, default=None, help="runs per configuration (default 2; quick 1)")
    args = p.parse_args(argv)
    quick = args.quick
    args.videos = args.videos or (2 if quick else 6)
    args.clips = args.clips or (8 if quick else 96)
    args.repeats = args.repeats or (1 if quick else 2)
    if quick:
        args.batch = min(args.batch, 2)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    return run(args)


if __name__ == "__main__":
    main()
