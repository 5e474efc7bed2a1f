"""nlray.tracking against a real `mlflow server` subprocess and a real sqlite store: one run per name, params,
metrics, artifacts, the dataset input, source tags (nlray.provenance), system metrics; and nlray.plots' PNGs and
per-class table."""
import csv
import hashlib
import io
import pickle
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pytest
from mlflow.tracking import MlflowClient

from nlray import plots, provenance, tracking
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
    curve = plots.learning_curves_png({"train/loss": run.metric_history("train/loss")}, tmp_path / "c.png")
    conf = plots.per_class_accuracy_png(np.array([[3, 1], [0, 4]]), ["x", "y"], tmp_path / "m.png")
    for png in (curve, conf):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        run.log_png(png)
    assert len(MlflowClient(mlflow_server).list_artifacts(run.id, "plots")) == 2


def test_sqlite_uri_is_made_absolute_for_workers(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert tracking.resolve_uri("sqlite:///mlflow.db") == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert tracking.resolve_uri("http://127.0.0.1:5000") == "http://127.0.0.1:5000"


ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def sqlite_uri(tmp_path_factory):
    """A real sqlite tracking store with one experiment whose artifacts stay in the test's folder."""
    root = tmp_path_factory.mktemp("sqlite-store")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    MlflowClient(uri).create_experiment("t-sqlite", artifact_location=str(root / "artifacts"))
    return uri


def sqlite_cfg(uri: str, name: str):
    return load_config("demo", [f"name={name}", f"tracking.uri={uri}", "tracking.experiment=t-sqlite"])


MANIFEST = pd.DataFrame({"uri": ["s3://b/k/train/a.mp4", "s3://b/k/train/b.mp4", "s3://b/k/val/c.mp4"],
                         "label": ["x", "y", "x"], "split": ["train", "train", "val"], "size": [1, 2, 3]})


def test_a_new_run_records_its_dataset_as_a_training_input(sqlite_uri):
    ds = tracking.manifest_dataset(MANIFEST, ["x", "y"], name="k", source="s3://user:secret@b/k")
    run, _ = tracking.start_or_resume_run(sqlite_cfg(sqlite_uri, "track-dataset"), ["x", "y"], dataset=ds)
    tracking.start_or_resume_run(sqlite_cfg(sqlite_uri, "track-dataset"), ["x", "y"], dataset=ds)  # resumed

    inputs = MlflowClient(sqlite_uri).get_run(run.id).inputs.dataset_inputs
    assert len(inputs) == 1  # a resume logs no second input
    got = inputs[0].dataset
    rows = "s3://b/k/train/a.mp4\tx\ttrain\ns3://b/k/train/b.mp4\ty\ttrain\ns3://b/k/val/c.mp4\tx\tval\n"
    assert got.digest == hashlib.sha256(rows.encode()).hexdigest()[:16]
    assert (got.name, got.source_type, got.source) == ("k", "s3", '{"uri": "s3://***@b/k"}')
    assert got.profile == '{"videos": 3, "videos_train": 2, "videos_val": 1, "num_classes": 2}'
    assert [(t.key, t.value) for t in inputs[0].tags] == [("mlflow.data.context", "training")]


def test_the_dataset_digest_follows_videos_labels_and_splits_not_row_order():
    digest = tracking.manifest_dataset(MANIFEST, ["x", "y"], name="k", source="k").digest
    shuffled = MANIFEST.iloc[[2, 0, 1]]
    relabelled = MANIFEST.assign(label=["x", "y", "y"])
    moved = MANIFEST.assign(split=["train", "val", "val"])
    assert tracking.manifest_dataset(shuffled, ["x", "y"], name="k", source="k").digest == digest
    for other in (relabelled, moved, MANIFEST.iloc[:2]):
        assert tracking.manifest_dataset(other, ["x", "y"], name="k", source="k").digest != digest
    with pytest.raises(ValueError, match="split"):
        tracking.manifest_dataset(MANIFEST.drop(columns="split"), ["x"], name="k", source="k")


def test_a_new_run_says_where_it_came_from(sqlite_uri, monkeypatch, tmp_path):
    # the driver's script, as Python records it (absolute: a job's driver leaves its relative working dir)
    monkeypatch.setattr(sys.modules["__main__"], "__file__", str(ROOT / "jobs" / "train.py"), raising=False)
    monkeypatch.setenv(provenance.RAY_JOB_ENV, "{}")  # what Ray's job supervisor sets in a submitted driver
    run, _ = tracking.start_or_resume_run(sqlite_cfg(sqlite_uri, "track-source"), ["x"])
    tags = MlflowClient(sqlite_uri).get_run(run.id).data.tags
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    assert tags["mlflow.source.name"] == "jobs/train.py" and tags["mlflow.source.type"] == "JOB"
    assert tags.get("mlflow.source.git.commit", "") == head  # absent where the checkout has no .git
    assert tags["nlray.version"] == "0.1.0"
    monkeypatch.delenv(provenance.RAY_JOB_ENV)
    assert provenance.source_tags()["mlflow.source.type"] == "LOCAL"
    assert provenance.entry_point(str(tmp_path / "driver.py")) == "driver.py"  # outside the project
    assert provenance.git_commit(tmp_path) == ""  # not a checkout (a ray job's working dir)


def test_system_metrics_land_in_the_run_under_the_node_id(sqlite_uri):
    run, _ = tracking.start_or_resume_run(sqlite_cfg(sqlite_uri, "track-system"), ["x"])
    with run.system_metrics(node_id="worker0", interval_s=1.0):
        time.sleep(3)
    metrics = MlflowClient(sqlite_uri).get_run(run.id).data.metrics
    assert 0 <= metrics["system/worker0/cpu_utilization_percentage"] <= 100
    used = metrics["system/worker0/system_memory_usage_megabytes"]
    assert 0 < used <= psutil.virtual_memory().total / 1e6
    assert len(run.metric_history("system/worker0/cpu_utilization_percentage")) >= 2  # one a second


def test_system_metrics_interval_zero_is_off_and_negative_is_an_error(sqlite_uri):
    run, _ = tracking.start_or_resume_run(sqlite_cfg(sqlite_uri, "track-system-off"), ["x"])
    with run.system_metrics(node_id=None, interval_s=0):
        pass
    assert not [k for k in MlflowClient(sqlite_uri).get_run(run.id).data.metrics if k.startswith("system/")]
    with pytest.raises(ValueError, match="interval_s=-1"):
        with run.system_metrics(node_id=None, interval_s=-1):
            pass


def test_per_class_table_from_a_hand_made_confusion_matrix():
    confusion = np.array([[3, 1, 0, 0],   # x: 3 of 4 right, 1 taken for y
                          [0, 5, 0, 0],   # y: all right
                          [2, 0, 0, 2],   # "z, w": none right; 2 each to x and to empty: the first, x
                          [0, 0, 0, 0]])  # empty: no videos
    rows = list(csv.DictReader(io.StringIO(plots.per_class_accuracy_csv(confusion, ["x", "y", "z, w", "empty"]))))
    assert [tuple(r.values()) for r in rows] == [
        ("z, w", "4", "0", "0.0000", "x", "0.5000"),  # weakest first
        ("x", "4", "3", "0.7500", "y", "0.2500"),
        ("y", "5", "5", "1.0000", "", "0.0000"),
        ("empty", "0", "0", "", "", "0.0000")]
    assert list(rows[0]) == ["class", "videos", "correct", "top1", "most_confused_with", "share"]
    with pytest.raises(ValueError, match="3 labels"):
        plots.per_class_accuracy_csv(confusion, ["x", "y", "z"])


def test_the_per_class_plot_renders_with_class_names_and_past_the_limit_without(tmp_path):
    small = plots.per_class_accuracy_png(np.array([[3, 1], [0, 4]]), ["x", "y"], tmp_path / "s.png")
    many = plots.per_class_accuracy_png(np.eye(61, dtype=int), [f"c{i}" for i in range(61)], tmp_path / "m.png")
    for png in (small, many):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_runs_that_start_together_all_record_the_same_dataset(mlflow_server):
    # a table's trials start at once and log one dataset into one experiment: the store's row is inserted once
    from concurrent.futures import ThreadPoolExecutor

    ds = tracking.manifest_dataset(MANIFEST, ["x", "y"], name="k", source="s3://b/k")
    client = MlflowClient(mlflow_server)
    runs = []
    for _ in range(4):  # 4 experiments of 8 runs: without the retry, 3 runs of 3 failed here
        exp = client.create_experiment(f"t-race-{time.time_ns()}")
        batch = [tracking.Run(client.create_run(exp).info.run_id, mlflow_server) for _ in range(8)]
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda r: r.log_dataset(ds), batch))
        runs += batch
    for r in runs:
        (got,) = client.get_run(r.id).inputs.dataset_inputs
        assert (got.dataset.name, got.dataset.digest) == ("k", ds.digest)


def test_the_final_model_loads_without_pickle_with_its_signature_and_label_map(mlflow_server, monkeypatch, tmp_path):
    import mlflow
    import torch
    from mlflow.exceptions import MlflowException

    from nlray.data.transforms import IMAGENET_MEAN, IMAGENET_STD
    from nlray.models import build_model

    cfg = load_config("demo", ["name=track-model", f"tracking.uri={mlflow_server}", "tracking.experiment=t-model",
                               "model.width=8"])
    labels = ["moving_left", "moving_right", "a, b", "über"]
    run, _ = tracking.start_or_resume_run(cfg, labels)
    torch.manual_seed(0)
    model = build_model(cfg.model, num_classes=len(labels)).eval()
    t, s = cfg.data.frames, cfg.data.crop_size
    run.log_model(model, labels=labels, frames=t, frame_stride=cfg.data.frame_stride, crop_size=s)
    with pytest.raises(ValueError, match="4 outputs but the label map 3 classes"):
        run.log_model(model, labels=labels[:3], frames=t, frame_stride=cfg.data.frame_stride, crop_size=s)

    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "false")  # a pickled model is refused
    uri = f"runs:/{run.id}/model"
    local = Path(mlflow.artifacts.download_artifacts(uri, dst_path=str(tmp_path), tracking_uri=mlflow_server))
    files = {p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file()}
    assert "data/model.pt2" in files and "data/model.pth" not in files  # torch.export, not a pickle
    assert not {"input_example.json", "serving_input_example.json"} & files  # the example is not stored
    assert (local / "extra_files" / "labels.txt").read_text(encoding="utf-8") == "".join(f"{n}\n" for n in labels)

    mlflow.set_tracking_uri(mlflow_server)
    loaded = mlflow.pyfunc.load_model(uri)
    (spec,) = loaded.metadata.signature.inputs.inputs
    assert (spec.shape, spec.type) == ((-1, 3, t, s, s), np.dtype(np.float32))
    (out,) = loaded.metadata.signature.outputs.inputs
    assert (out.shape, out.type) == ((-1, len(labels)), np.dtype(np.float32))
    meta = loaded.metadata.metadata
    assert meta["nlray.labels"] == labels
    assert (meta["nlray.input"]["mean"], meta["nlray.input"]["std"]) == (list(IMAGENET_MEAN), list(IMAGENET_STD))
    assert meta["nlray.output"]["scores"] == "logits"

    x = np.random.default_rng(0).standard_normal((3, 3, t, s, s)).astype(np.float32)
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    for batch in (x[:2], x):  # the batch is dynamic (exported from an example of 2)
        np.testing.assert_allclose(loaded.predict(batch), want[:len(batch)], atol=1e-4, rtol=1e-4)
    with pytest.raises(MlflowException, match="[Ss]hape"):  # another clip length: refused by the signature
        loaded.predict(x[:, :, : t // 2])
    got = mlflow.pytorch.load_model(uri)(torch.from_numpy(x[:2]))
    np.testing.assert_allclose(got.detach().numpy(), want[:2], atol=1e-4, rtol=1e-4)
