"""nlray.tracking against a real `mlflow server` subprocess: one run per name, params, metrics, artifacts."""
import pickle

import numpy as np
from mlflow.tracking import MlflowClient

from nlray import tracking
from nlray.config import load_config


def test_a_name_maps_to_one_run_that_resume_finds_again(mlflow_server):
    cfg = load_config("nl_i3d_r50_32f", ["name=track-a", f"tracking.uri={mlflow_server}",
                                         "tracking.experiment=t-tracking"])
    run, resumed = tracking.start_or_resume_run(cfg, ["a", "b"], {"world_size": 2})
    assert not resumed
    run.log_metrics({"train/loss": 1.5}, step=10)
    run.end("FAILED")
    again, resumed = tracking.start_or_resume_run(cfg, ["a", "b"])
    assert (again, resumed) == (run, True)
    other = load_config("nl_i3d_r50_32f", ["name=track-b", f"tracking.uri={mlflow_server}",
                                           "tracking.experiment=t-tracking"])
    assert tracking.start_or_resume_run(other, ["a"])[0].id != run.id

    got = MlflowClient(mlflow_server).get_run(run.id)
    assert got.info.status == "RUNNING"  # set back from FAILED by the resume
    p = got.data.params
    assert p["model.arch"] == "i3d" and p["model.nonlocal_blocks"] == "5" and p["data.frames"] == "32"
    assert p["world_size"] == "2" and p["num_classes"] == "2" and "version.ray" in p and "version.torch" in p
    assert got.data.tags["instantiation"] == "embedded_gaussian" and got.data.tags["frames"] == "32"
    assert got.data.metrics["train/loss"] == 1.5
    names = {a.path for a in MlflowClient(mlflow_server).list_artifacts(run.id)}
    assert {"config.yaml", "labels.txt"} <= names


def test_a_run_handle_travels_to_another_process_and_logs_there(mlflow_server):
    cfg = load_config("demo", ["name=track-pickle", f"tracking.uri={mlflow_server}", "tracking.experiment=t-pk"])
    run, _ = tracking.start_or_resume_run(cfg, ["x"])
    copy = pickle.loads(pickle.dumps(run))  # what Ray does to train_loop_config
    assert copy == run
    copy.log_metrics({"train/loss": 0.25}, step=3)
    assert run.metric_history("train/loss") == [(3, 0.25)]


def test_plots_are_pngs(tmp_path, mlflow_server):
    cfg = load_config("demo", ["name=track-plot", f"tracking.uri={mlflow_server}", "tracking.experiment=t-plot"])
    run, _ = tracking.start_or_resume_run(cfg, ["x", "y"])
    for step, loss in enumerate([2.0, 1.0, 0.5]):
        run.log_metrics({"train/loss": loss}, step)
    curve = tracking.learning_curve_png(run, ["train/loss"], tmp_path / "c.png")
    conf = tracking.confusion_png(np.array([[3, 1], [0, 4]]), ["x", "y"], tmp_path / "m.png")
    for png in (curve, conf):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        run.log_png(png)
    assert len(MlflowClient(mlflow_server).list_artifacts(run.id, "plots")) == 2


def test_sqlite_uri_is_made_absolute_for_workers(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert tracking.resolve_uri("sqlite:///mlflow.db") == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert tracking.resolve_uri("http://127.0.0.1:5000") == "http://127.0.0.1:5000"
