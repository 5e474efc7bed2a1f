"""The cluster path end to end, on real processes: a head with no CPUs, a "GPU-like" train node and a CPU-only
decode node joined with `ray start` (token auth on), the moto S3 endpoint as shared storage, an `mlflow
server`; jobs arrive through the Jobs API (`ray job submit --working-dir .`) exactly as a user sends them.

The nodes get the cluster-wide defaults cluster/*.yaml sets (NLRAY_STORAGE, MLFLOW_TRACKING_URI), so the
embedded default runs with no data argument: its synthetic set is generated once into the shared storage.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import boto3
import pytest
from mlflow.tracking import MlflowClient

from console import assert_console, strict_warnings
from nlray.testing.clusters import RAY, start_autoscaling_cluster, start_cluster

ROOT = Path(__file__).resolve().parents[1]
BUCKET = "shared"
# The embedded default's two stages, shrunk: 8-frame clips, a few steps each, the tiny synthetic set; 24 steps
# an epoch, as each new epoch restarts the decoder pool (~6 s on 2 cores).
TINY_DEMO = ["data.synthetic=tiny", "data.frames=8", "data.repeat=24", "data.eval_num_clips=1",
             "train.steps=4", "train.log_every=2", "train.checkpoint_every=2", "train.warmup_steps=0",
             "train.lr_milestones=[1000]", "data.decode_actors=1", "data.decode_actors_max=2"]

pytestmark = pytest.mark.cluster
IDLE_TIMEOUT_S = 15  # the autoscaling test's idle_timeout_minutes, in seconds


def cluster_env(s3_endpoint: str, mlflow_server: str, bucket: str) -> dict[str, str]:
    """What cluster/*.yaml sets on every node: credentials (an instance role there), shared storage, MLflow."""
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=bucket)
    return {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": s3_endpoint, "NLRAY_STORAGE": f"s3://{bucket}/results",
            "MLFLOW_TRACKING_URI": mlflow_server}


@pytest.fixture(scope="module")
def cluster(s3_endpoint, mlflow_server, tmp_path_factory):
    env = cluster_env(s3_endpoint, mlflow_server, BUCKET)
    c = start_cluster(nodes=[{"num_cpus": 2, "resources": {"nlray_train": 2}},
                             {"num_cpus": 2, "resources": {"nlray_decode": 2}}],
                      env=env, tmp=tmp_path_factory.mktemp("multinode"))
    try:
        yield c
    finally:
        c.stop()


def api(cluster, path: str) -> dict:
    req = urllib.request.Request(cluster.dashboard_url + path, headers={"Authorization": f"Bearer {cluster.token}"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.load(r)


def start_job(cluster, *args: str, env_vars: dict[str, str] | None = None) -> str:
    """`ray job submit --working-dir . --no-wait -- python ARGS`: the submission id."""
    sub = f"t{time.time_ns()}"
    runtime_env = ["--runtime-env-json", json.dumps({"env_vars": env_vars})] if env_vars else []
    cmd = [str(RAY), "job", "submit", "--address", cluster.dashboard_url, "--working-dir", str(ROOT),
           *runtime_env, "--submission-id", sub, "--no-wait", "--", sys.executable, *args]
    out = subprocess.run(cmd, env=cluster.env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    return sub


def wait_job(cluster, sub: str, timeout: float = 600) -> str:
    t0 = time.monotonic()
    while (status := api(cluster, f"/api/jobs/{sub}")["status"]) not in ("SUCCEEDED", "FAILED", "STOPPED"):
        assert time.monotonic() - t0 < timeout, f"job {sub} still {status} after {timeout}s"
        time.sleep(1)
    return status


def submit(cluster, *args: str, timeout: float = 600,
           env_vars: dict[str, str] | None = None) -> tuple[str, str, str, float]:
    """`ray job submit --working-dir .` then wait: (submission id, final status, logs, seconds)."""
    t0 = time.monotonic()
    sub = start_job(cluster, *args, env_vars=env_vars)
    status = wait_job(cluster, sub, timeout)
    return sub, status, api(cluster, f"/api/jobs/{sub}/logs")["logs"], time.monotonic() - t0


def actors_of(cluster, sub: str) -> list[dict]:
    job_id = api(cluster, f"/api/jobs/{sub}")["job_id"]
    rows = api(cluster, "/api/v0/actors?limit=10000&detail=1")["data"]["result"]["result"]
    return [a for a in rows if a["job_id"] == job_id]


def node_with(nodes: list[dict], resource: str) -> str:
    return next(n["node_id"] for n in nodes if resource in n["resources_total"])


def test_the_embedded_default_runs_as_a_submitted_job_across_nodes(cluster, mlflow_server, s3_endpoint):
    # a warning that one of nlray's modules causes is an error, on the driver and every worker of the job
    sub, status, logs, seconds = submit(cluster, "jobs/train_longclip.py", "--demo", *TINY_DEMO,
                                        "tracking.system_metrics_interval_s=1",
                                        env_vars={"PYTHONWARNINGS": strict_warnings()})
    assert status == "SUCCEEDED", logs[-5000:]
    print(f"\nembedded default (tiny) through the Jobs API: {seconds:.1f}s")
    assert_console(logs, stages=2, steps=4, log_every=2)

    nodes = cluster.nodes()
    train_node, decode_node = node_with(nodes, "nlray_train"), node_with(nodes, "nlray_decode")
    actors = [a for a in actors_of(cluster, sub) if a["node_id"]]  # placed (a grown pool may leave some unplaced)
    workers = [a for a in actors if a["class_name"] == "RayTrainWorker"]
    decoders = [a for a in actors if "ClipDecoder" in a["class_name"]]  # train and eval decoders
    print("actors:", sorted({(a["class_name"], a["node_id"][:8]) for a in actors}))
    assert len(workers) == 4  # 2 workers x 2 stages
    assert {a["node_id"] for a in workers} == {train_node}
    assert decoders and {a["node_id"] for a in decoders} == {decode_node}

    client = MlflowClient(mlflow_server)
    exp = client.get_experiment_by_name("nlray")
    runs = {r.info.run_name: r for r in client.search_runs([exp.experiment_id])}
    for name in ("demo-short", "demo-long"):
        run = runs[name]
        assert run.info.status == "FINISHED"
        assert {"train/loss", "val/video_top1"} <= set(run.data.metrics)
        arts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"config.yaml", "checkpoint", "plots"} <= arts
        assert run.data.params["train.storage_path"] == f"s3://{BUCKET}/results"
        # what the MLflow UI's runs table shows: the dataset, where the run came from, the train node's use
        (data,) = run.inputs.dataset_inputs
        assert data.dataset.name == "synthetic-tiny" and data.dataset.source_type == "s3"
        assert json.loads(data.dataset.profile)["num_classes"] == 4
        assert run.data.tags["mlflow.source.name"] == "jobs/train_longclip.py"
        assert run.data.tags["mlflow.source.type"] == "JOB"
        assert 0 <= run.data.metrics["system/node0/cpu_utilization_percentage"] <= 100
    assert runs["demo-long"].data.params["train.init_from"] == runs["demo-short"].info.run_id
    models = client.search_logged_models(experiment_ids=[exp.experiment_id])  # mlflow.pytorch.log_model
    assert {m.source_run_id for m in models} >= {runs[n].info.run_id for n in ("demo-short", "demo-long")}

    keys = [o["Key"] for page in boto3.client("s3", endpoint_url=s3_endpoint).get_paginator(
        "list_objects_v2").paginate(Bucket=BUCKET, Prefix="results/") for o in page.get("Contents", [])]
    for name in ("demo-short", "demo-long"):
        assert any(k.startswith(f"results/{name}/") and k.endswith("step_00000004/model.pt") for k in keys), keys
    assert any(k.startswith("results/datasets/synthetic-tiny/") and k.endswith(".mp4") for k in keys)


def test_a_stopped_job_submitted_again_resumes_into_the_same_mlflow_run(cluster, mlflow_server):
    args = ["jobs/train.py", "--name", "stopped", *TINY_DEMO, "train.steps=24", "train.checkpoint_every=4",
            "data.val_split=none"]
    client = MlflowClient(mlflow_server)
    sub = start_job(cluster, *args)
    t0 = time.monotonic()
    while True:  # until two checkpoints are behind it (steps 4 and 8), then `ray job stop`
        runs = client.search_runs([client.get_experiment_by_name("nlray").experiment_id],
                                  "tags.`nlray.name` = 'stopped'") if client.get_experiment_by_name("nlray") else []
        steps = [m.step for m in client.get_metric_history(runs[0].info.run_id, "train/loss")] if runs else []
        if steps and max(steps) >= 10:
            break
        assert time.monotonic() - t0 < 300 and api(cluster, f"/api/jobs/{sub}")["status"] in ("PENDING", "RUNNING")
        time.sleep(0.5)
    stopped_at = max(steps)
    out = subprocess.run([str(RAY), "job", "stop", "--address", cluster.dashboard_url, sub], env=cluster.env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert wait_job(cluster, sub, 120) == "STOPPED"
    again = start_job(cluster, *args)
    assert wait_job(cluster, again) == "SUCCEEDED", api(cluster, f"/api/jobs/{again}/logs")["logs"][-4000:]
    (run,) = client.search_runs([runs[0].info.experiment_id], "tags.`nlray.name` = 'stopped'")
    assert run.info.run_id == runs[0].info.run_id and run.info.status == "FINISHED"
    (resumed,) = client.get_metric_history(run.info.run_id, "train/resumed_from_step")
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")]
    print(f"\nstopped after step {stopped_at}, resumed from step {resumed.value:.0f}; logged steps {steps}")
    assert steps == sorted(set(steps)) and steps[-1] == 24  # no step logged twice, the axis never went back
    assert resumed.value % 4 == 0 and stopped_at - resumed.value <= 4 + 2


def test_node_local_paths_are_refused_before_any_work(cluster, tmp_path):
    sub, status, logs, seconds = submit(
        cluster, "jobs/train.py", "--name", "refused", "--data", str(tmp_path),
        f"train.storage_path={tmp_path / 'results'}", "tracking.uri=sqlite:///mlflow.db", timeout=180)
    print(f"\nrefused in {seconds:.1f}s:\n{logs[-1500:]}")
    assert status == "FAILED"
    assert "this Ray cluster spans several nodes (3 now)" in logs
    for key in ("train.storage_path=", "tracking.uri=", "data.root="):
        assert key in logs
    assert "Traceback" not in logs
    assert not [a for a in actors_of(cluster, sub) if a["class_name"] == "RayTrainWorker"]


@pytest.fixture
def autoscaling(s3_endpoint, mlflow_server, tmp_path):
    """Ray's fake multi-node provider with cluster/local/autoscaling.yaml: a head with no CPUs, no worker nodes."""
    env = {**cluster_env(s3_endpoint, mlflow_server, "autoscaled"),
           "NLRAY_TRAIN_RESOURCE": "nlray_train", "NLRAY_DECODE_RESOURCE": "nlray_decode"}
    c = start_autoscaling_cluster(ROOT / "cluster" / "local" / "autoscaling.yaml", env, tmp=tmp_path / "ray",
                                  idle_timeout_minutes=IDLE_TIMEOUT_S / 60)  # the shipped 1 minute is CI's time
    try:
        yield c
    finally:
        c.stop()


def count_types(nodes: list[dict]) -> tuple[int, int]:
    return tuple(sum(1 for n in nodes if r in n["resources_total"]) for r in ("nlray_train", "nlray_decode"))


def test_a_submitted_job_makes_the_autoscaler_add_train_and_decode_nodes_then_remove_them(autoscaling, mlflow_server):
    assert count_types(autoscaling.nodes()) == (0, 0)
    sub = f"t{time.time_ns()}"
    t0 = time.monotonic()
    cmd = [str(RAY), "job", "submit", "--address", autoscaling.dashboard_url, "--working-dir", str(ROOT),
           "--submission-id", sub, "--no-wait", "--", sys.executable, "jobs/train.py", "--name", "autoscaled",
           *TINY_DEMO, "data.val_split=none"]
    out = subprocess.run(cmd, env=autoscaling.env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    timeline = []  # (seconds, train nodes, decode nodes)
    while (status := api(autoscaling, f"/api/jobs/{sub}")["status"]) not in ("SUCCEEDED", "FAILED", "STOPPED"):
        timeline.append((round(time.monotonic() - t0), *count_types(autoscaling.nodes())))
        assert time.monotonic() - t0 < 420, f"job still {status}: {timeline}"
        time.sleep(2)
    done = time.monotonic() - t0
    logs = api(autoscaling, f"/api/jobs/{sub}/logs")["logs"]
    assert status == "SUCCEEDED", logs[-4000:]
    assert max(t for _, t, _ in timeline) == 2  # one train slot per node here: 2 workers, 2 train nodes
    assert max(d for _, _, d in timeline) >= 1
    while count_types(nodes := autoscaling.nodes()) != (0, 0):  # idle for IDLE_TIMEOUT_S
        timeline.append((round(time.monotonic() - t0), *count_types(nodes)))
        assert time.monotonic() - t0 - done < 180, f"nodes not removed: {timeline}"
        time.sleep(3)
    removed = time.time()
    timeline.append((round(time.monotonic() - t0), 0, 0))
    changes = [row for i, row in enumerate(timeline) if i == 0 or row[1:] != timeline[i - 1][1:]]
    # removed for idleness, not lost early: the last node went well after the last training step (the job's
    # driver still logs the model after it, so the nodes may idle before the job ends)
    client = MlflowClient(mlflow_server)
    (run,) = client.search_runs([client.get_experiment_by_name("nlray").experiment_id],
                                "tags.`nlray.name` = 'autoscaled'")
    last_step = max(m.timestamp for m in client.get_metric_history(run.info.run_id, "train/loss")) / 1000
    print(f"\njob done at {done:.0f}s, last step {removed - last_step:.0f}s before the last node went; "
          f"(seconds, train nodes, decode nodes) at each change: {changes}")
    assert removed - last_step > IDLE_TIMEOUT_S * 2 / 3
