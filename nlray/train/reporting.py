"""What the workers tell MLflow and the driver goes through Ray Train's own channel, ``ray.train.report``.

    worker (every rank, same calls):  report_step({"train/loss": 1.2, ...}, step)   # rank 0's dict is logged
    controller (RunLogger, a ray.train.UserCallback): writes it to the MLflow run, once per step
    driver, after fit():              no_data_epoch(result)                           # None or the epoch

The tracker is written, never read, while training runs: the steps a restart replays from the last
checkpoint are skipped by the controller, which lives through worker restarts and remembers the last step
it wrote (``logged_upto``; a resubmitted job starts it from the run it resumes). An epoch that gave no
batch ends training with a report the driver reads from the result.
"""
from __future__ import annotations

from typing import Any, Optional

import ray
import ray.train

from nlray.secrets import adopt_credential_env
from nlray.tracking import Run

__all__ = ["RunLogger", "report_step", "report_start", "report_no_data", "no_data_epoch"]

LOG, STEP, START, NO_DATA = "log", "step", "resumed_from_step", "no_data_epoch"  # the keys of a report


def report_step(metrics: dict[str, float], step: int, *, first: bool = False) -> None:
    """Every rank calls it (a report is a collective); rank 0's metrics are logged at ``step``.
    ``first``: log even at a step already written (the step-0 statistics of precise BN)."""
    ray.train.report({STEP: step, LOG: metrics, "first": first})


def report_start(step: int, skipped: list[str]) -> None:
    """Every rank at a (re)start: where training resumed and which checkpoints did not load."""
    ray.train.report({STEP: step, START: step, "skipped": skipped})


def report_no_data(step: int, epoch: int) -> None:
    """Every rank when an epoch gave no batch: the driver fails the run, naming the reasons."""
    ray.train.report({STEP: step, NO_DATA: epoch})


def no_data_epoch(result) -> Optional[int]:
    """The epoch that gave no batch, from the result of ``fit()``; None when training ran."""
    epoch = (result.metrics or {}).get(NO_DATA)
    return None if epoch is None else int(epoch)


class RunLogger(ray.train.UserCallback):
    """Ray Train controller callback: rank 0's reports into the MLflow run, each step once.

    ``logged_upto``: the last step the run holds already; ``restarts``: the restarts it records already.
    ``credentials``: ObjectRef of the driver's MLflow credentials (``secrets.credential_env``).
    """

    def __init__(self, run: Run, credentials: Any, *, logged_upto: int = 0, restarts: int = 0):
        self.run, self.credentials = run, credentials
        self.logged_upto, self.restarts, self._adopted = logged_upto, restarts, False

    @classmethod
    def resuming(cls, run: Run, credentials: Any) -> "RunLogger":
        """A logger that carries on from what ``run`` holds (the driver's one read of the tracker, on
        resuming: training itself only writes to it)."""
        logged = max((s for s, _ in run.metric_history("train/loss")), default=0)
        return cls(run, credentials, logged_upto=logged, restarts=len(run.metric_history("train/resumed_from_step")))

    def after_report(self, run_context: Any, metrics: list[dict], checkpoint: Any) -> None:
        if not metrics:
            return
        if not self._adopted:  # the controller is a process of its own: the driver's credentials, once
            adopt_credential_env(ray.get(self.credentials))
            self._adopted = True
        self.write(metrics[0])

    def write(self, report: dict) -> None:
        """One rank-0 report into the run: step metrics (new steps only), a restart, tags."""
        step = int(report.get(STEP, 0))
        if LOG in report and (step > self.logged_upto or report.get("first")):
            self.run.log_metrics(report[LOG], step)
            self.logged_upto = max(self.logged_upto, step)
        if report.get(START):
            self.restarts += 1
            self.run.log_metrics({"train/resumed_from_step": step}, step)
            self.run.set_tags({"nlray.restarts": str(self.restarts)})
        if report.get("skipped"):
            self.run.set_tags({"nlray.skipped_checkpoints": "; ".join(report["skipped"])[:5000]})
