"""jobs/prepare_kinetics.py on the moto S3 endpoint: missing videos, list files, probing bad
videos with Ray Data, transcoding end to end. Results are read back with boto3 + pyarrow/PyAV."""
from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import av
import boto3
import pandas as pd
import pyarrow.parquet as pq
import pytest

from nlray.data import synthetic
from nlray.data.badvideo import mp4_structure
from nlray.data.probe import ProbeFn

REPO = Path(__file__).resolve().parents[1]
JOB = str(REPO / "jobs" / "prepare_kinetics.py")
N_TINY = len(synthetic.TINY_SPEC.classes) * (synthetic.TINY_SPEC.per_class
                                             + synthetic.TINY_SPEC.val_per_class)


def sys_path_import():
    sys.path.insert(0, str(REPO / "jobs"))
    import prepare_kinetics

    return prepare_kinetics


prepare_kinetics = sys_path_import()


@pytest.fixture
def s3_tiny(s3_bucket) -> tuple[str, str]:
    """(bucket, root URI) of the tiny synthetic dataset uploaded to the moto endpoint."""
    synthetic.make_dataset(f"s3://{s3_bucket}/k", synthetic.TINY_SPEC)
    return s3_bucket, f"s3://{s3_bucket}/k"


def get(bucket: str, key: str) -> bytes:
    return boto3.client("s3").get_object(Bucket=bucket, Key=key)["Body"].read()


def keys(bucket: str, prefix: str) -> list[str]:
    pages = boto3.client("s3").get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return sorted(o["Key"] for page in pages for o in page.get("Contents", []))


def parquet(bucket: str, key: str) -> pd.DataFrame:
    return pq.read_table(io.BytesIO(get(bucket, key))).to_pandas()


def test_help():
    out = subprocess.run([sys.executable, JOB, "--help"], capture_output=True, text=True, check=True)
    assert "--transcode" in out.stdout and "--probe" in out.stdout


def test_missing_video_left_out_and_reported(s3_tiny):
    bucket, root = s3_tiny
    videos = [k for k in keys(bucket, "k/") if k.endswith(".mp4")]
    gone = videos[3]
    boto3.client("s3").delete_object(Bucket=bucket, Key=gone)
    run = subprocess.run([sys.executable, JOB, "--root", root, "--out",
                          f"s3://{bucket}/out/manifest.parquet"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert f"{N_TINY - 1} videos, 4 classes, 1 annotated videos missing" in run.stdout
    assert json.loads(run.stdout.strip().splitlines()[-1])["missing"] == 1
    df = parquet(bucket, "out/manifest.parquet")
    assert len(df) == N_TINY - 1 and f"s3://{bucket}/{gone}" not in set(df["uri"])
    assert set(df["uri"]) == {f"s3://{bucket}/{k}" for k in videos if k != gone}
    # Reported as split/label/file, which here is also the path below the root.
    assert get(bucket, "out/missing.txt").decode().split() == [gone[len("k/"):]]
    assert json.loads(get(bucket, "out/labels.json")) == sorted(synthetic.TINY_SPEC.classes)


def test_missing_bucket_fails_with_a_clear_message(s3_endpoint, tmp_path):
    run = subprocess.run([sys.executable, JOB, "--root", "s3://no-such-bucket-b/k", "--out",
                          str(tmp_path / "m.parquet")], capture_output=True, text=True)
    assert run.returncode == 2
    assert "s3://no-such-bucket-b/k: bucket does not exist (NoSuchBucket" in run.stderr
    assert "Traceback" not in run.stderr


def test_plain_list_format(s3_tiny):
    bucket, root = s3_tiny
    videos = [k for k in keys(bucket, "k/train/") if k.endswith(".mp4")]
    lines = [f"{k[len('k/'):]} {k.split('/')[2]}" for k in videos]
    boto3.client("s3").put_object(Bucket=bucket, Key="k/train_list.txt",
                                  Body="\n".join(lines).encode())
    assert prepare_kinetics.main(["--root", f"{root}/train_list.txt", "--out",
                                  f"s3://{bucket}/list/manifest.parquet"]) == 0
    df = parquet(bucket, "list/manifest.parquet")
    assert sorted(zip(df["uri"], df["label"])) == sorted(
        (f"s3://{bucket}/{k}", k.split("/")[2]) for k in videos)
    assert set(df["split"]) == {"train"}


def annotate(bucket: str, extra: dict[str, bytes]) -> None:
    """Upload extra train videos (name -> bytes) and add them to annotations/train.csv."""
    client = boto3.client("s3")
    text = get(bucket, "k/annotations/train.csv").decode()
    for i, (name, data) in enumerate(extra.items()):
        client.put_object(Bucket=bucket, Key=f"k/train/moving_left/{name}_{i:06d}_{i + 10:06d}.mp4",
                          Body=data)
        text += f"moving_left,{name},{i},{i + 10},train\n"
    client.put_object(Bucket=bucket, Key="k/annotations/train.csv", Body=text.encode())


def test_probe_reports_bad_videos_by_reason(ray_local, s3_tiny):
    bucket, root = s3_tiny
    good_key = next(k for k in keys(bucket, "k/train/") if k.endswith(".mp4"))
    good = get(bucket, good_key)
    annotate(bucket, {"zero": b"", "cut": good[: len(good) // 2], "junk": b"\x00\x11junk" * 300,
                      "short": synthetic_bytes(frames=5)})
    assert prepare_kinetics.main(["--root", root, "--probe", "--min-frames", "10", "--concurrency",
                                  "2", "--out", f"s3://{bucket}/p/manifest.parquet"]) == 0
    df = parquet(bucket, "p/manifest.parquet")
    status = dict(zip(df["youtube_id"], df["status"]))
    assert [status.pop(k) for k in ("zero", "cut", "junk", "short")] == [
        "empty", "truncated", "undecodable", "too_short"]
    assert set(status.values()) == {"ok"} and len(status) == N_TINY
    ok = df[df["status"] == "ok"]
    # num_frames / fps / size agree with PyAV decoding the same file independently.
    row = ok[ok["uri"] == f"s3://{bucket}/{good_key}"].iloc[0]
    with av.open(io.BytesIO(good)) as c:
        frames = list(c.decode(video=0))
        rate = float(c.streams.video[0].average_rate)
    assert (row["num_frames"], row["fps"], row["width"], row["height"]) == (
        len(frames), rate, frames[0].width, frames[0].height)
    # The CLI leaves missing videos out before probing; the probe itself still names them.
    probed = ProbeFn()(pd.DataFrame({"uri": [f"s3://{bucket}/k/nothing.mp4"]}))
    assert list(probed["status"]) == ["missing"]


def test_mp4_structure_tells_cut_from_junk():
    data = synthetic_bytes()
    assert mp4_structure(data) == "ok"
    assert mp4_structure(data[:-100]) == "truncated"
    assert mp4_structure(b"junk" * 100) == "not_mp4"


def synthetic_bytes(frames: int = 10) -> bytes:
    """A real H.264 .mp4 of the first ``frames`` frames of a tiny synthetic video."""
    from nlray.data.transcode import encode_h264

    plan = synthetic.plan_videos(synthetic.TINY_SPEC)[0]
    sink = io.BytesIO()
    encode_h264(synthetic.render_video(plan)[:frames], sink, width=plan.width, height=plan.height,
                fps=plan.fps, keyint=250)
    return sink.getvalue()


def decode_info(data: bytes) -> tuple[int, int, int, list[int]]:
    """(frames, width, height, keyframe positions) read by PyAV."""
    with av.open(io.BytesIO(data)) as c:
        s = c.streams.video[0]
        packets = [p for p in c.demux(s) if p.size]
        keyframes = [i for i, p in enumerate(packets) if p.is_keyframe]
    with av.open(io.BytesIO(data)) as c:
        frames = list(c.decode(video=0))
    return len(frames), frames[0].width, frames[0].height, keyframes


def test_transcode_end_to_end(ray_local, s3_tiny):
    bucket, root = s3_tiny
    annotate(bucket, {"junk": b"\x00\x11junk" * 300})
    assert prepare_kinetics.main(["--root", root, "--transcode", f"s3://{bucket}/t",
                                  "--short-side", "40", "--keyint", "16", "--concurrency", "2",
                                  "--out", f"s3://{bucket}/tm/manifest.parquet"]) == 0
    df = parquet(bucket, "tm/manifest.parquet")
    source = [k for k in keys(bucket, "k/") if k.endswith(".mp4") and "junk" not in k]
    assert sorted(df["uri"]) == sorted(f"s3://{bucket}/t/{k[len('k/'):]}" for k in source)
    for key in source:
        n_src, w_src, h_src, _ = decode_info(get(bucket, key))
        n, w, h, keyframes = decode_info(get(bucket, "t/" + key[len("k/"):]))
        assert min(w, h) == min(40, w_src, h_src) and abs(n - n_src) <= 1
        assert keyframes == list(range(0, n, 16))
    assert get(bucket, "t/annotations/train.csv") == get(bucket, "k/annotations/train.csv")
    assert "t/manifest.parquet" in keys(bucket, "t/")
    report = list(csv.DictReader(io.StringIO(get(bucket, "tm/transcode_report.csv").decode())))
    assert [(r["uri"].rsplit("/", 1)[-1], r["status"]) for r in report] == [
        ("junk_000000_000010.mp4", "undecodable")]


# ------------------------------------------------------------------------------ resume after a kill

RESUME_SPEC = synthetic.SyntheticSpec(classes=synthetic.CLASSES[:4], per_class=4, val_per_class=1,
                                      width_range=(160, 192), aspects=(4 / 3,), fps_choices=(25,),
                                      duration_range=(4.0, 4.0))  # 20 videos, ~0.3 s each to transcode
RESUME_CONCURRENCY, RESUME_BATCH = 2, 2  # transcode batches are 2 videos


def results_records(out_root: Path, parts: Optional[set] = None) -> list[dict]:
    """Records of the transcode results log below ``out_root`` (only ``parts``' when given)."""
    records = []
    for part in sorted(out_root.glob(".nlray-prepare/transcode-*/part-*.jsonl")):
        if parts is None or part in parts:
            records += [json.loads(line) for line in part.read_text().splitlines() if line.strip()]
    return records


def outputs(out_root: Path) -> dict[str, tuple[int, int]]:
    """Every transcoded video below ``out_root``: relative path -> (inode, mtime_ns): an output
    written again (atomically: a new file renamed over it) gets a new inode."""
    return {str(p.relative_to(out_root)): (p.stat().st_ino, p.stat().st_mtime_ns)
            for p in out_root.rglob("*.mp4")}


def kill_session(proc: subprocess.Popen) -> None:
    """SIGKILL every process of the job's session (the driver, the local Ray it started, its actors)."""
    from nlray.testing.clusters import _session_members

    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    deadline = time.monotonic() + 60
    while (left := _session_members(proc.pid)) and time.monotonic() < deadline:
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.2)
    assert not _session_members(proc.pid)


def comparable(manifest: Path, out_root: Path) -> list[tuple]:
    """The manifest's rows, sorted, the output root replaced by OUT, without ``size``: x264 + swscale
    outputs of one video differ by a few bytes from one process to another (seen here: 13905 / 13908
    bytes, same x264 options, threads=1), killed or not; each size must be its file's."""
    df = pd.read_parquet(manifest)
    assert [Path(u).stat().st_size for u in df["uri"]] == list(df["size"])
    df["uri"] = [u.replace(str(out_root), "OUT") for u in df["uri"]]
    return sorted(df.drop(columns=["size"]).astype(str).itertuples(index=False, name=None))


def test_a_killed_transcode_resumes_where_it_stopped(tmp_path):
    root = tmp_path / "k"
    synthetic.make_dataset(str(root), RESUME_SPEC)
    total = len(list(root.rglob("*.mp4")))
    assert total == 20

    def command(out: Path) -> list[str]:
        return [sys.executable, JOB, "--root", str(root), "--transcode", str(out), "--short-side", "64",
                "--keyint", "16", "--concurrency", str(RESUME_CONCURRENCY), "--decode-resource", "",
                "--flush-s", "0", "--progress-interval-s", "5", "--out", str(out / "manifest.parquet")]

    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS",)}
    out = tmp_path / "t"
    t0 = time.monotonic()
    first = subprocess.Popen(command(out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True, env=env)
    try:
        while len(results_records(out)) < 6:  # the log shows 6 videos done: kill it, mid-way
            assert first.poll() is None, "the transcode ended before it could be killed"
            assert time.monotonic() - t0 < 300
            time.sleep(0.05)
    finally:
        kill_session(first)
    killed_at = len(results_records(out))
    after_kill = outputs(out)
    parts_before = set(out.glob(".nlray-prepare/transcode-*/part-*.jsonl"))
    print(f"\nkilled after {time.monotonic() - t0:.1f}s: {killed_at} logged, {len(after_kill)} outputs")
    assert killed_at < total and not (out / "manifest.parquet").exists()

    again = subprocess.run(command(out), capture_output=True, text=True, env=env, timeout=600)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert f"transcode: {total}/{total} done" in again.stdout
    assert "from an earlier run" in again.stdout  # the rerun's progress lines count what it skipped
    parts_after = set(out.glob(".nlray-prepare/transcode-*/part-*.jsonl"))
    new_parts = {p for p in parts_after - parts_before if not p.name.endswith("-compact.jsonl")}
    rerun = results_records(out, new_parts)
    encoded = [r["uri"] for r in rerun if r["action"] == "encoded"]
    adopted = [r["uri"] for r in rerun if r["action"] == "adopted"]
    rewritten = [k for k, v in outputs(out).items() if k in after_kill and after_kill[k] != v]
    print(f"rerun: {len(encoded)} encoded ({len(after_kill)} outputs existed, {len(rewritten)} of them written "
          f"again), {len(adopted)} kept unlogged outputs, {total - len(rerun)} skipped as logged")
    assert len(rerun) == total - killed_at  # nothing logged is done again
    assert len(encoded) <= total - len(after_kill) + RESUME_CONCURRENCY * RESUME_BATCH
    assert len(rewritten) <= RESUME_CONCURRENCY * RESUME_BATCH  # at most the in-flight ones

    never_killed = tmp_path / "ref"
    ref = subprocess.run(command(never_killed), capture_output=True, text=True, env=env, timeout=600)
    assert ref.returncode == 0, ref.stdout[-3000:] + ref.stderr[-3000:]
    assert comparable(out / "manifest.parquet", out) == comparable(never_killed / "manifest.parquet", never_killed)
    print(f"total {time.monotonic() - t0:.1f}s")
