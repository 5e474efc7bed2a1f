"""Elastic training on preemptible nodes: the worker count, the preemption notice, and what MLflow shows of both.

Ray Train (2.60, V2) does the scheduling: with ``train.min_workers`` below ``train.num_workers`` the run starts
once the minimum fits, looks for room every ``train.resize_interval_s`` and restarts the worker group at the
new size from the latest checkpoint; a node drained with a preemption notice restarts the group against its
own budget (``train.max_preemptions``), not ``train.max_failures``. nlray keeps the recipe: the global batch,
lr, schedule and step count are fixed (nlray.train.optim.StepPlan); on a notice every worker saves a
checkpoint at once and trains on until the node goes, so a preemption costs the steps after the notice.
"""
from __future__ import annotations

import logging
import time
from typing import Any, Optional

import ray.train
from ray.train import FailureConfig, ScalingConfig

from nlray.config import TrainConfig
from nlray.tracking import Run
from nlray.train.optim import StepPlan

log = logging.getLogger("nlray")
PREEMPTIONS_TAG, RESIZES_TAG = "nlray.preemptions", "nlray.resizes"


def scaling_config(tcfg: TrainConfig, resources: dict[str, float]) -> ScalingConfig:
    """A fixed worker count, or (min_workers, num_workers) when the run is elastic."""
    elastic = 0 < tcfg.min_workers < tcfg.num_workers
    return ScalingConfig(num_workers=(tcfg.min_workers, tcfg.num_workers) if elastic else tcfg.num_workers,
                         use_gpu=tcfg.use_gpu, resources_per_worker=resources,
                         elastic_resize_monitor_interval_s=tcfg.resize_interval_s)


def failure_config(tcfg: TrainConfig) -> FailureConfig:
    """Failures and preemptions on budgets of their own: a spot reclaim does not use up ``max_failures``. Ray 2.60
    counts a node's death as a preemption only when it comes after the notice's deadline (before it: an
    unexpected termination, a failure); the grace keeps the survivors until that death is seen, so that the
    restart does not land on the draining node."""
    return FailureConfig(max_failures=tcfg.max_failures, max_preemption_failures=tcfg.max_preemptions,
                         preemption_grace_s=tcfg.preemption_grace_s)


def note_world(run: Run, step: int, plan: StepPlan, restored: dict[str, Any]) -> None:
    """Rank 0 at each (re)start: ``train/world_size`` and ``train/accumulation`` at ``step``; when the size
    differs from the last one logged, a resize: the ``nlray.resizes`` tag and a console line, which names
    the preempted node when the checkpoint restored was saved on its notice."""
    before = [w for _, w in run.metric_history("train/world_size", by_time=True)][-1:]
    run.log_metrics({"train/world_size": plan.world, "train/accumulation": plan.accum}, step)
    if not before or int(before[0]) == plan.world:
        return
    run.set_tags({RESIZES_TAG: str(int(run.tags().get(RESIZES_TAG) or 0) + 1)})
    notice = restored.get("preempted") if plan.world < before[0] else None
    why = f"node {', '.join(notice['nodes'])} preempted at step {notice['step']}; " if notice else ""
    log.warning("nlray resized %d -> %d workers (%scheckpoint at step %d); %d micro-batch(es) of %d clips a "
                "worker make each step's %d clips", before[0], plan.world, why, step, plan.accum, plan.batch,
                plan.clips)


def ask(tcfg: TrainConfig, step: int, noticed: bool) -> Optional[Any]:
    """Ray Train's PreemptionInfo once a node of this worker group is being preempted, else None. Asked every
    ``preemption_check_every`` steps until the first notice: a barrier, so every rank asks at the same steps
    (and all get the same answer)."""
    if noticed or step % tcfg.preemption_check_every:
        return None
    return ray.train.get_preemption_info()


def notice_meta(info: Any, step: int) -> dict[str, Any]:
    """What the checkpoint saved on a notice records of it (the restart's console line reads it)."""
    return {"preempted": {"nodes": info.preempted_node_ids, "ranks": info.preempted_ranks,
                          "step": step}}


def note_notice(run: Run, info: Any, step: int, seconds: float) -> None:
    """Rank 0 after the notice's checkpoint: the console, ``nlray.preemptions`` and
    ``train/preemption_checkpoint_s`` (seconds from the notice seen to the checkpoint reported) at ``step``."""
    left = f"{info.deadline_ms / 1000 - time.time():.0f} s" if info.deadline_ms else "an unknown time"
    log.warning("nlray preemption notice: node %s (ranks %s) goes in %s; checkpoint at step %d in %.1f s, "
                "training on", ", ".join(info.preempted_node_ids), info.preempted_ranks, left,
                step, seconds)
    run.set_tags({PREEMPTIONS_TAG: str(int(run.tags().get(PREEMPTIONS_TAG) or 0) + 1)})
    run.log_metrics({"train/preemption_checkpoint_s": seconds}, step)
