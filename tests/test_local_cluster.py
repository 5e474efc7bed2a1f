"""Real multi-node Ray clusters on this machine (nlray.local_cluster): token auth, the Jobs API, placement by
the custom resources of cluster/*.yaml, and autoscaling on Ray's fake multi-node provider.

Each cluster is started by a fixture and stopped by its own session ids, also when a test fails.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from nlray.local_cluster import RAY, start_autoscaling_cluster, start_cluster

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable

pytestmark = pytest.mark.cluster


def _by_resource(nodes: list[dict], name: str) -> list[str]:
    return [n["node_id"] for n in nodes if name in n["resources_total"]]


@pytest.fixture
def multinode(tmp_path):
    cluster = start_cluster(
        nodes=[{"num_cpus": 2, "resources": {"nlray_train": 1}},
               {"num_cpus": 2, "resources": {"nlray_decode": 2}}],
        env={"NLRAY_STORAGE": str(tmp_path / "results")}, tmp=tmp_path / "ray")
    try:
        yield cluster
    finally:
        cluster.stop()


PROBE = """\
import json, os, ray
ray.init()

@ray.remote(num_cpus=1, resources={"nlray_train": 1})
def on_train():
    return ray.get_runtime_context().get_node_id()

@ray.remote(num_cpus=1, resources={"nlray_decode": 1})
def on_decode():
    return ray.get_runtime_context().get_node_id()

out = {"train": ray.get([on_train.remote() for _ in range(2)]),
       "decode": ray.get([on_decode.remote() for _ in range(4)]),
       "driver": ray.get_runtime_context().get_node_id(),
       "storage": os.environ.get("NLRAY_STORAGE")}
print("NLRAY_PROBE " + json.dumps(out), flush=True)
"""


def _get_json(url: str, token: str | None) -> dict:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as r:
        return json.load(r)


def test_multinode_jobs_api_and_placement(multinode, tmp_path):
    t0 = time.monotonic()
    nodes = multinode.nodes()
    head = [n["node_id"] for n in nodes if n["is_head_node"]]
    train, decode = _by_resource(nodes, "nlray_train"), _by_resource(nodes, "nlray_decode")
    assert len(nodes) == 3 and len(head) == len(train) == len(decode) == 1
    head_node = next(n for n in nodes if n["is_head_node"])
    assert head_node["resources_total"].get("CPU", 0) == 0  # the head schedules no work

    # token auth is on: the dashboard refuses a request without the token
    with pytest.raises(urllib.error.HTTPError) as err:
        _get_json(f"{multinode.dashboard_url}/api/v0/nodes", token=None)
    assert err.value.code == 401

    work = tmp_path / "job"
    work.mkdir()
    (work / "probe.py").write_text(PROBE)
    sub_id = f"nlray-test-{os.getpid()}-{int(time.time())}"
    cmd = [str(RAY), "job", "submit", "--address", multinode.dashboard_url, "--working-dir", str(work),
           "--submission-id", sub_id, "--no-wait", "--", "python", "probe.py"]
    done = subprocess.run(cmd, env=multinode.env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr

    api = f"{multinode.dashboard_url}/api/jobs/{sub_id}"
    deadline = time.monotonic() + 120
    while (status := _get_json(api, multinode.token)["status"]) not in ("SUCCEEDED", "FAILED", "STOPPED"):
        assert time.monotonic() < deadline, f"job still {status}"
        time.sleep(0.5)
    logs = _get_json(api + "/logs", multinode.token)["logs"]
    assert status == "SUCCEEDED", logs
    probe = json.loads(next(line for line in logs.splitlines() if line.startswith("NLRAY_PROBE "))[12:])
    assert set(probe["train"]) == set(train)
    assert set(probe["decode"]) == set(decode)
    assert probe["driver"] == head[0]  # job drivers run on the head ...
    assert probe["storage"] == str(tmp_path / "results")  # ... and inherit the node's environment
    print(f"job submitted and checked in {time.monotonic() - t0:.1f}s")


DEMAND = """\
import json, time, ray
ray.init()

@ray.remote(num_cpus=1, resources={"nlray_train": 1})
def on_train():
    time.sleep(3)
    return ray.get_runtime_context().get_node_id()

@ray.remote(num_cpus=1, resources={"nlray_decode": 1})
def on_decode():
    time.sleep(3)
    return ray.get_runtime_context().get_node_id()

refs = [on_train.remote(), on_decode.remote(), on_decode.remote()]
print("NLRAY_PROBE " + json.dumps(ray.get(refs)), flush=True)
"""


@pytest.fixture
def autoscaling(tmp_path):
    cluster = start_autoscaling_cluster(ROOT / "cluster" / "local" / "autoscaling.yaml", tmp=tmp_path / "ray")
    try:
        yield cluster
    finally:
        cluster.stop()


def test_fake_autoscaler_adds_and_removes_nodes_by_custom_resource(autoscaling, tmp_path):
    nodes = autoscaling.nodes()
    assert len(nodes) == 1 and nodes[0]["resources_total"].get("CPU", 0) == 0

    script = tmp_path / "demand.py"
    script.write_text(DEMAND)
    out = tmp_path / "demand.out"
    t0 = time.monotonic()
    with open(out, "w") as f:
        driver = subprocess.Popen([PYTHON, str(script)], env=autoscaling.env, stdout=f,
                                  stderr=subprocess.STDOUT, start_new_session=True)
    try:
        up_at, max_seen, grown = None, 1, []
        while driver.poll() is None:
            nodes = autoscaling.nodes()
            max_seen = max(max_seen, len(nodes))
            if up_at is None and _by_resource(nodes, "nlray_train") and _by_resource(nodes, "nlray_decode"):
                up_at, grown = time.monotonic() - t0, nodes
            assert time.monotonic() - t0 < 120, "the driver did not finish"
            time.sleep(0.5)
        finished_at = time.monotonic() - t0
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait()
    text = out.read_text()
    assert driver.returncode == 0, text
    assert up_at is not None, "no node of each type was added"
    assert max_seen == 3  # one train node, one decode node (2 decode slots), no more
    train, decode = _by_resource(grown, "nlray_train"), _by_resource(grown, "nlray_decode")
    ran = json.loads(next(line for line in text.splitlines() if line.startswith("NLRAY_PROBE "))[12:])
    assert ran[0] in train and set(ran[1:]) <= set(decode)

    # idle_timeout_minutes: 1 -> both nodes go about a minute after the tasks end
    while len(nodes := autoscaling.nodes()) > 1:
        assert time.monotonic() - t0 < finished_at + 150, f"{len(nodes)} nodes still alive"
        time.sleep(1)
    down_at = time.monotonic() - t0
    assert down_at - finished_at > 30  # removed for idleness, not lost early
    print(textwrap.dedent(f"""
        fake autoscaler: train+decode nodes up {up_at:.1f}s after the demand, tasks done at
        {finished_at:.1f}s, nodes removed at {down_at:.1f}s ({down_at - finished_at:.1f}s idle)"""))
