"""A node lost mid-run, on real processes: a head with no CPUs, two train nodes and two decode nodes joined
with `ray start`, moto S3 for data and checkpoints, an `mlflow server`; the job arrives through the Jobs API.

Losing a node is SIGKILL to every process of its `ray start` session at once (raylet, object store, agents
and the workers it started), as when a machine is preempted. First the train node that holds the two Ray
Train workers goes: the worker group restarts on the other train node from the latest checkpoint, into the
same MLflow run. Then a decode node holding decoder actors goes: Ray Data restarts them on the other decode
node, retries their tasks and rebuilds their lost blocks, and the epoch still holds every training row once.
"""
from __future__ import annotations

import threading
import time

import pytest
from mlflow.tracking import MlflowClient

from nlray.testing.clusters import start_cluster
from test_multinode import api, cluster_env, start_job, wait_job

pytestmark = pytest.mark.cluster
EPOCH_ROWS = 8 * 10  # TINY_SPEC's 8 training videos x data.repeat=10: one clip each per epoch
ARGS = ["jobs/train.py", "--name", "nodeloss", "data.frames=8", "data.val_split=none", "data.repeat=10",
        "train.steps=30", "train.log_every=2", "train.checkpoint_every=4", "train.warmup_steps=0",
        "train.lr_milestones=[1000]", "train.max_failures=3", "data.decode_actors=2", "data.decode_actors_max=2"]
NODES = {"train0": {"nlray_train": 2}, "train1": {"nlray_train": 2},  # 2 workers fit on either
         "decode0": {"nlray_decode": 2}, "decode1": {"nlray_decode": 2}}
FAST_NODE_DEATH = {"RAY_health_check_period_ms": "1000", "RAY_health_check_failure_threshold": "3"}


@pytest.fixture(scope="module")
def cluster(s3_endpoint, mlflow_server, tmp_path_factory):
    env = {**cluster_env(s3_endpoint, mlflow_server, "nodeloss"), **FAST_NODE_DEATH}
    # each node also carries a resource named after it, so a node id from the state API names its session
    c = start_cluster(nodes=[{"num_cpus": 2, "resources": {**res, name: 1}} for name, res in NODES.items()],
                      env=env, tmp=tmp_path_factory.mktemp("nodeloss"))
    try:
        yield c
    finally:
        c.stop()


def session_of(cluster, node_id: str) -> tuple[str, int]:
    """(name in NODES, `ray start` session id) of a node."""
    node = next(n for n in cluster.nodes() if n["node_id"] == node_id)
    name = next(k for k in NODES if k in node["resources_total"])
    return name, cluster.sessions[1 + list(NODES).index(name)]


def alive_actors(cluster, class_part: str) -> list[dict]:
    rows = api(cluster, "/api/v0/actors?limit=10000&detail=1")["data"]["result"]["result"]
    return [a for a in rows if class_part in a["class_name"] and a["state"] == "ALIVE" and a["node_id"]]


def steps_of(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    return [(m.step, m.value) for m in client.get_metric_history(run_id, key)]


def lose_nodes(cluster, client: MlflowClient, seen: dict) -> None:
    """After step 6 lose the train node of the workers; once resumed and a new step logged, lose a decode node."""
    try:
        deadline = time.monotonic() + 400
        while time.monotonic() < deadline:
            exp = client.get_experiment_by_name("nlray")
            runs = client.search_runs([exp.experiment_id], "tags.`nlray.name` = 'nodeloss'") if exp else []
            steps = [s for s, _ in steps_of(client, runs[0].info.run_id, "train/loss")] if runs else []
            resumed = steps_of(client, runs[0].info.run_id, "train/resumed_from_step") if runs else []
            if "train_node" not in seen and steps and max(steps) >= 6:
                node = alive_actors(cluster, "RayTrainWorker")[0]["node_id"]
                seen["train_node"], session = session_of(cluster, node)
                seen["train_killed_at"] = max(steps)
                seen["train_pids"] = cluster.kill_node(session)
            elif "train_node" in seen and resumed and "logged_at_resume" not in seen:
                seen["logged_at_resume"] = max(steps)  # replayed steps are not logged: wait for new ones
            elif "logged_at_resume" in seen and max(steps) >= seen["logged_at_resume"] + 2:
                decoders = alive_actors(cluster, "ClipDecoder")  # those of the restarted group's dataset
                if decoders:
                    seen["decode_node"], session = session_of(cluster, decoders[0]["node_id"])
                    seen["decode_killed_at"] = max(steps)
                    seen["decode_pids"] = cluster.kill_node(session)
                    return
            time.sleep(0.3)
        seen["error"] = "timed out waiting for the steps to kill at"
    except Exception as e:  # a thread's error would vanish: the test reports it
        seen["error"] = repr(e)


def test_a_lost_train_node_and_a_lost_decode_node_cost_at_most_a_checkpoint_interval(cluster, mlflow_server,
                                                                                      s3_data):
    client, seen = MlflowClient(mlflow_server), {}
    t0 = time.monotonic()
    sub = start_job(cluster, *ARGS, "--data", s3_data)
    killer = threading.Thread(target=lose_nodes, args=(cluster, client, seen), daemon=True)
    killer.start()
    status = wait_job(cluster, sub, timeout=600)
    killer.join(timeout=5)
    logs = api(cluster, f"/api/jobs/{sub}/logs")["logs"]
    (cluster.log_dir / "job.log").write_text(logs)  # kept beside the Ray logs for a failure
    print(f"\nnode loss job: {status} in {time.monotonic() - t0:.0f}s; {seen}")
    assert "error" not in seen and "decode_node" in seen, (seen, logs[-4000:])
    assert status == "SUCCEEDED", logs[-5000:]

    (run,) = client.search_runs([client.get_experiment_by_name("nlray").experiment_id],
                                "tags.`nlray.name` = 'nodeloss'")
    assert run.info.status == "FINISHED" and run.data.tags["nlray.restarts"] == "1"
    steps = [s for s, _ in steps_of(client, run.info.run_id, "train/loss")]
    assert steps == list(range(2, 31, 2))  # the step axis never went back, no step logged twice
    ((_, resumed),) = steps_of(client, run.info.run_id, "train/resumed_from_step")
    lost = seen["train_killed_at"] - resumed
    print(f"train node {seen['train_node']} lost after step {seen['train_killed_at']}: resumed from step "
          f"{resumed:.0f} (lost {lost:.0f} steps, checkpoint interval 4); decode node {seen['decode_node']} "
          f"lost after step {seen['decode_killed_at']}")
    assert resumed % 4 == 0 and 0 <= lost <= 4 + 2  # + the steps run between the log and the kill

    # the worker group now lives on the other train node, the decoders on the other decode node
    alive = {n["node_id"]: next(k for k in NODES if k in n["resources_total"]) for n in cluster.nodes()
             if any(k in n["resources_total"] for k in NODES)}
    assert seen["train_node"] not in alive.values() and seen["decode_node"] not in alive.values()
    rows = api(cluster, "/api/v0/actors?limit=10000&detail=1")["data"]["result"]["result"]
    on = {(a["class_name"], alive.get(a["node_id"])) for a in rows if a["node_id"] in alive}
    assert ("RayTrainWorker", "train1" if seen["train_node"] == "train0" else "train0") in on, on
    restarted = [a for a in rows if "ClipDecoder" in a["class_name"] and int(a.get("num_restarts") or 0) > 0]
    print("decoders restarted:", [(a["actor_id"][:8], alive.get(a["node_id"]), a["num_restarts"]) for a in restarted])
    assert restarted and all(alive.get(a["node_id"]) for a in restarted)  # each on a node still there

    # every whole epoch, the lost decode node's included, held each training row once: none lost, none twice
    clips = steps_of(client, run.info.run_id, "data/epoch_clips")
    dups = steps_of(client, run.info.run_id, "data/epoch_duplicates")
    print(f"epochs (end step, clips): {clips}; duplicates: {dups}")
    assert any(s > seen["decode_killed_at"] for s, _ in clips)  # the epoch with the decode node lost is there
    assert all(v == EPOCH_ROWS for _, v in clips) and all(v == 0 for _, v in dups)
