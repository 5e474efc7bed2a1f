"""The controller's RunLogger writes rank 0's reports into a real MLflow run: each step once, however often a
restart replays it, and a resubmitted job's logger carries on from what the run holds."""
from __future__ import annotations

import ray
from mlflow.tracking import MlflowClient

from nlray.tracking import Run
from nlray.train.reporting import RunLogger, no_data_epoch


def new_run(uri: str) -> Run:
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("t-reporting") or client.get_experiment(
        client.create_experiment("t-reporting"))
    return Run(client.create_run(exp.experiment_id).info.run_id, uri)


def steps(uri: str, run: Run, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in MlflowClient(uri).get_metric_history(run.id, key))


def test_replayed_steps_are_written_once_and_restarts_counted(ray_local, mlflow_server):
    run = new_run(mlflow_server)
    logger = RunLogger(run, ray.put({}))
    for step in (2, 4, 6):  # the first attempt, then a restart from the checkpoint at step 2
        logger.after_report(None, [{"step": step, "log": {"train/loss": float(step)}}, {"ignored": 1}], None)
    logger.after_report(None, [{"step": 2, "resumed_from_step": 2, "skipped": ["step_4: truncated"]}], None)
    for step in (4, 6, 8):  # replayed: 4 and 6 already written with the first attempt's values
        logger.after_report(None, [{"step": step, "log": {"train/loss": 100.0 + step}}], None)
    logger.after_report(None, [{"step": 0, "log": {"train/precise_bn_batches": 3.0}, "first": True}], None)
    assert steps(mlflow_server, run, "train/loss") == [(2, 2.0), (4, 4.0), (6, 6.0), (8, 108.0)]
    assert steps(mlflow_server, run, "train/precise_bn_batches") == [(0, 3.0)]
    tags = MlflowClient(mlflow_server).get_run(run.id).data.tags
    assert tags["nlray.restarts"] == "1" and tags["nlray.skipped_checkpoints"] == "step_4: truncated"

    again = RunLogger.resuming(run, ray.put({}))  # a resubmitted job: the run's own history
    assert (again.logged_upto, again.restarts) == (8, 1)
    again.after_report(None, [{"step": 8, "log": {"train/loss": 0.5}}, ], None)
    again.after_report(None, [{"step": 8, "resumed_from_step": 8}], None)
    assert steps(mlflow_server, run, "train/loss")[-1] == (8, 108.0)
    assert MlflowClient(mlflow_server).get_run(run.id).data.tags["nlray.restarts"] == "2"


def test_no_data_epoch_comes_from_the_result():
    class Result:  # the one attribute of ray.train.Result read here
        def __init__(self, metrics):
            self.metrics = metrics

    assert no_data_epoch(Result({"step": 40, "epoch": 3})) is None
    assert no_data_epoch(Result(None)) is None
    assert no_data_epoch(Result({"step": 0, "no_data_epoch": 0})) == 0
