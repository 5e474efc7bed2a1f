"""Joining Ray: the one place a job connects to a cluster or starts a local one."""
from __future__ import annotations

import os

import ray


def connect(address: str = "", num_cpus: int = 0) -> None:
    """Join ``address`` or the cluster ``ray job submit`` names in RAY_ADDRESS, else start a local Ray.

    A no-op when Ray is already initialised (tests, or a job that connected before).
    """
    if ray.is_initialized():
        return
    if address:
        ray.init(address=address)
    elif os.environ.get("RAY_ADDRESS"):
        ray.init()
    else:
        ray.init(num_cpus=num_cpus or None)
