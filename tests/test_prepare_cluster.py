"""`prepare_kinetics.py --probe` submitted to an autoscaling cluster (Ray's fake multi-node provider with
cluster/local/autoscaling.yaml: a head with no CPUs, no worker nodes at the start) through the Jobs API,
as a user sends it, with no placement or size on its command line.

What the job left behind is the evidence: its results log (one JSON line per video, with the node id,
the actor's pid and when the video was probed) and the Ray State API's nodes. Every probe ran on a node
that carries nlray_decode and that the autoscaler added after the job was submitted, the autoscaler added
no other kind of node (a train node: a GPU node on cluster/aws.yaml), and at least two actors were probing
at the same time, for seconds, not one actor doing everything before a second one started.

The work is a Kinetics-layout root on the moto S3 endpoint: a few real tiny H.264 videos, each copied to
many object keys (a server-side copy: cheap), so that the job lasts long enough for the pool to grow.
"""
from __future__ import annotations

import io
import json
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import boto3
import pyarrow.parquet as pq
import pytest

from nlray.testing.clusters import RAY, start_autoscaling_cluster
from videos import video_bytes

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ("abseiling", "juggling", "surfing")
# Object keys per class (every one a copy of one of three real videos): 3600 videos, so that the job outlasts
# Ray Data's first 20 s. Ray Data 2.60 sizes a dataset's resource budget from its autoscaling coordinator,
# which reads the cluster's nodes every 20 s (DefaultAutoscalingCoordinator.TICK_INTERVAL_S); on a cluster
# that had no worker node when the job started, it runs one task at a time until that first refresh, however
# many actors the pool has. 1200 videos (~16 s here) were probed by one task at a time, on two actors in turn.
COPIES = 1200
DECODE_SLOTS = 2 * 2  # cluster/local/autoscaling.yaml: decode max_workers 2 x (CPU 2, nlray_decode 2)


def api(cluster, path: str) -> dict:
    req = urllib.request.Request(cluster.dashboard_url + path, headers={"Authorization": f"Bearer {cluster.token}"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.load(r)


@pytest.fixture
def autoscaling(s3_endpoint, tmp_path):
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": s3_endpoint}  # what cluster/*.yaml gives every node (an instance role there)
    c = start_autoscaling_cluster(ROOT / "cluster" / "local" / "autoscaling.yaml", env, tmp=tmp_path / "ray",
                                  idle_timeout_minutes=0.5)
    try:
        yield c
    finally:
        c.stop()


def kinetics_root(tmp_path: Path, bucket: str, prefix: str) -> int:
    """``s3://BUCKET/PREFIX``: annotations/train.csv and train/<class>/<id>_000000_000010.mp4, each class's
    videos object copies of one real H.264 video of its own size; returns the number of videos."""
    s3 = boto3.client("s3")
    sizes = {"abseiling": (64, 48, 60), "juggling": (96, 72, 90), "surfing": (128, 96, 120)}
    rows, copies = ["label,youtube_id,time_start,time_end,split"], []
    for label, name in enumerate(CLASSES):
        w, h, n = sizes[name]
        source = f"{prefix}-src/{name}.mp4"
        s3.put_object(Bucket=bucket, Key=source, Body=video_bytes(tmp_path, f"{name}.mp4", num_frames=n, width=w,
                                                                   height=h, gop=n, label=label))
        for i in range(COPIES):
            vid = f"{name[:3]}{i:08d}"
            rows.append(f"{name},{vid},0,10,train")
            copies.append((source, f"{prefix}/train/{name}/{vid}_000000_000010.mp4"))
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda c: s3.copy_object(Bucket=bucket, Key=c[1], CopySource={"Bucket": bucket, "Key": c[0]}),
                      copies))
    s3.put_object(Bucket=bucket, Key=f"{prefix}/annotations/train.csv", Body=("\n".join(rows) + "\n").encode())
    return len(copies)


def empty(bucket: str) -> None:
    s3 = boto3.client("s3")
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        if page.get("Contents"):
            s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": o["Key"]} for o in page["Contents"]]})


def results_log(bucket: str, prefix: str) -> list[dict]:
    """Every record of the probe's results log below ``s3://BUCKET/PREFIX/.nlray-prepare/``."""
    s3 = boto3.client("s3")
    keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(
        Bucket=bucket, Prefix=f"{prefix}/.nlray-prepare/probe-") for o in page.get("Contents", [])]
    return [json.loads(line) for k in keys if k.endswith(".jsonl")
            for line in s3.get_object(Bucket=bucket, Key=k)["Body"].read().decode().splitlines() if line.strip()]


def concurrent_seconds(records: list[dict]) -> tuple[float, int]:
    """Seconds during which videos of two or more actors (node id, pid) were being probed, and the most
    actors probing at one moment."""
    events = sorted([(r["t_start"], 1, (r["node_id"], r["pid"])) for r in records]
                    + [(r["t_end"], -1, (r["node_id"], r["pid"])) for r in records], key=lambda e: (e[0], e[1]))
    busy: Counter = Counter()
    overlap, most, last = 0.0, 0, None
    for t, step, actor in events:
        if last is not None and sum(1 for v in busy.values() if v > 0) >= 2:
            overlap += t - last
        busy[actor] += step
        most = max(most, sum(1 for v in busy.values() if v > 0))
        last = t
    return overlap, most


def test_probe_runs_on_decode_nodes_the_autoscaler_adds_several_actors_at_once(autoscaling, s3_bucket, tmp_path, request):
    request.addfinalizer(lambda: empty(s3_bucket))  # in batches: the bucket's own teardown deletes one by one
    total = kinetics_root(tmp_path, s3_bucket, "k")
    (head,) = autoscaling.nodes()  # no worker node yet, and a head that schedules nothing
    assert head["is_head_node"] and head["resources_total"].get("CPU", 0) == 0

    sub = f"probe{time.time_ns()}"
    submitted = time.time()
    cmd = [str(RAY), "job", "submit", "--address", autoscaling.dashboard_url, "--working-dir", str(ROOT),
           "--submission-id", sub, "--no-wait", "--", sys.executable, "jobs/prepare_kinetics.py",
           "--root", f"s3://{s3_bucket}/k", "--out", f"s3://{s3_bucket}/k/manifest.parquet", "--probe",
           "--progress-interval-s", "5", "--flush-s", "1"]
    out = subprocess.run(cmd, env=autoscaling.env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    timeline = []  # (seconds since submitted, decode nodes alive, train nodes alive)
    while (status := api(autoscaling, f"/api/jobs/{sub}")["status"]) not in ("SUCCEEDED", "FAILED", "STOPPED"):
        row = (round(time.time() - submitted), *(sum(r in n["resources_total"] for n in autoscaling.nodes())
                                                 for r in ("nlray_decode", "nlray_train")))
        if not timeline or row[1:] != timeline[-1][1:]:
            timeline.append(row)
        assert time.time() - submitted < 240, f"job still {status}: {timeline}"
        time.sleep(1)
    logs = api(autoscaling, f"/api/jobs/{sub}/logs")["logs"]
    assert status == "SUCCEEDED", logs[-5000:]
    print(f"\njob done in {time.time() - submitted:.0f}s; (seconds, decode nodes, train nodes) at each change: "
          f"{timeline}\n" + "\n".join(line for line in logs.splitlines() if line.startswith("probe")))

    # The pool's size comes from the autoscaler's node types, not from the nothing that was free at submit time.
    assert (f"probe: a pool of 1 to {DECODE_SLOTS} actors on nlray_decode nodes "
            f"(autoscaler node types decode: 2 x 2)") in logs
    manifest = pq.read_table(io.BytesIO(boto3.client("s3").get_object(
        Bucket=s3_bucket, Key="k/manifest.parquet")["Body"].read())).to_pandas()
    assert len(manifest) == total and set(manifest["status"]) == {"ok"}
    records = results_log(s3_bucket, "k")
    assert sorted(r["uri"] for r in records) == sorted(manifest["uri"])  # each video probed once, logged once

    # (a) every probe ran on a decode node that the autoscaler added after the job was submitted; it added
    # no other kind (a train node stands for a GPU node of cluster/aws.yaml)
    nodes = {n["node_id"]: n for n in api(autoscaling, "/api/v0/nodes?limit=1000&detail=1")["data"]["result"]["result"]}
    added = [n for n in nodes.values() if not n["is_head_node"]]
    assert added and all(n["start_time_ms"] / 1000 > submitted for n in added), added
    assert all(set(n["resources_total"]) & {"nlray_decode", "nlray_train"} == {"nlray_decode"} for n in added), added
    used = Counter(r["node_id"] for r in records)
    assert set(used) <= {n["node_id"] for n in added}, (used, nodes)

    # (b) several actors at once: videos of different actors were being probed at the same moments
    actors = Counter((r["node_id"], r["pid"]) for r in records)
    overlap, most = concurrent_seconds(records)
    spans = {f"{node[-6:]}/{pid}": (round(min(r["t_start"] for r in records if r["pid"] == pid) - submitted, 1),
                                    round(max(r["t_end"] for r in records if r["pid"] == pid) - submitted, 1), count)
             for (node, pid), count in sorted(actors.items())}
    print(f"{len(records)} videos by {len(actors)} actors on {len(used)} of {len(added)} decode nodes added; "
          f"(start s, end s, videos) per actor (node/pid): {spans}; {overlap:.1f}s with two or more actors "
          f"probing, at most {most} at once")
    assert len(actors) >= 2 and most >= 2
    assert overlap >= 5.0
