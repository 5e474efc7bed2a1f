"""Real multi-node Ray clusters on this machine (nlray.testing.clusters): token auth, the Jobs API, placement by
the custom resources of cluster/*.yaml (autoscaling on Ray's fake multi-node provider: tests/test_multinode.py).

Each cluster is started by a fixture and stopped by its own session ids, also when a test fails.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from nlray.testing.clusters import RAY, start_cluster

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
