"""Real components for the tests: a local Ray, a moto S3 endpoint on 127.0.0.1, an MLflow server.

Each is a real process started here and stopped by its own pid; nothing is mocked.
"""
from __future__ import annotations

import os
import shutil

import pytest

from nlray.testing.servers import BIN, free_port, start, start_moto, stop

FAKE_AWS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory):
    """URL of a real S3 HTTP endpoint (moto_server) on 127.0.0.1; AWS env vars point at it."""
    proc, url = start_moto(tmp_path_factory.mktemp("moto") / "moto.log")
    saved = {k: os.environ.get(k) for k in [*FAKE_AWS, "AWS_ENDPOINT_URL"]}
    try:
        os.environ.update(FAKE_AWS, AWS_ENDPOINT_URL=url)
        yield url
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        stop(proc)


@pytest.fixture
def s3_bucket(s3_endpoint, request):
    """A fresh bucket on the moto endpoint, named after the test."""
    import boto3

    name = "t-" + "".join(c if c.isalnum() else "-" for c in request.node.name.lower())[:50].strip("-")
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    s3.create_bucket(Bucket=name)
    yield name
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=name):
        for obj in page.get("Contents", []):
            s3.delete_object(Bucket=name, Key=obj["Key"])
    s3.delete_bucket(Bucket=name)


@pytest.fixture(scope="session")
def ray_local(s3_endpoint):
    """A local Ray (4 logical CPUs on 2 cores), shut down at the end of the session.

    Depends on s3_endpoint so that Ray workers inherit the endpoint and fake credentials.
    """
    import ray

    ray.init(num_cpus=4, log_to_driver=False,  # the dashboard serves the State API Ray Train polls
             runtime_env={"env_vars": {**FAKE_AWS, "AWS_ENDPOINT_URL": s3_endpoint}})
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """URI of a real `mlflow server` subprocess on 127.0.0.1 (sqlite backend, local artifacts)."""
    root = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    cmd = [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
           "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
           "--artifacts-destination", str(root / "artifacts"), "--workers", "1"]
    url = f"http://127.0.0.1:{port}"
    proc = start(cmd, url + "/health", root / "server.log", timeout=120)
    try:
        yield url
    finally:
        stop(proc)
        shutil.rmtree(root / "artifacts", ignore_errors=True)


@pytest.fixture(scope="session")
def s3_data(s3_endpoint):
    """A tiny synthetic Kinetics-like set in the official layout, in a bucket on the moto endpoint."""
    import boto3

    from nlray.data.synthetic import make_dataset
    from nlray.data.synthetic_spec import TINY_SPEC

    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket="train-data")
    make_dataset("s3://train-data/k", TINY_SPEC)
    return "s3://train-data/k"
