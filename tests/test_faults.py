"""Faults on real parts (a local Ray with 2 Ray Train workers, moto S3, an `mlflow server`): a dataset that gives
no clip, a worker killed mid-run, a checkpoint cut short or missing a file, a bad --init-from. Each test says
what was lost and what was kept, read back from MLflow and the checkpoints on disk."""
from __future__ import annotations

import logging
import os
import signal
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
import ray
from ray.util.state import list_actors

from nlray.config import ConfigError, load_config
from nlray.train.checkpoint import stored_checkpoints
from nlray.train.trainer import NoDataError, fit, require_usable_videos
from tiny import TINY

EXPERIMENT = "t-faults"


@pytest.fixture(scope="module")
def env(ray_local, s3_data, mlflow_server, tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    common = [f"data.root={s3_data}", f"data.cache_dir={root / 'cache'}", f"tracking.uri={mlflow_server}",
              f"tracking.experiment={EXPERIMENT}", f"train.storage_path={root / 'results'}"]
    return {"common": common, "uri": mlflow_server, "root": root}


def config(env, *extra: str, preset: str = "demo"):
    """TINY runs with no validation split (these tests are about training; a run validates in test_trainer)."""
    return load_config(preset, [*TINY, *env["common"], "data.val_split=none", *extra])


def runs_named(uri: str, name: str) -> list:
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(EXPERIMENT)
    return [] if exp is None else client.search_runs([exp.experiment_id], f"tags.`nlray.name` = '{name}'")


def history(uri: str, run_id: str, key: str) -> list[tuple[int, float]]:
    return [(m.step, m.value) for m in MlflowClient(uri).get_metric_history(run_id, key)]


def test_a_training_set_with_no_decodable_video_stops_with_its_reasons(env, tmp_path):
    root = tmp_path / "garbage"
    (root / "train").mkdir(parents=True)
    lines = []
    for i in range(16):  # random bytes with a video's name, in a `path label` list
        (root / "train" / f"v{i}.mp4").write_bytes(os.urandom(4000 + i))
        lines.append(f"train/v{i}.mp4 {i % 2}")
    (root / "train.txt").write_text("\n".join(lines) + "\n")
    cfg = config(env, "name=garbage", f"data.root={root}", "data.repeat=1", "train.steps=4")
    t0 = time.monotonic()
    with pytest.raises(NoDataError) as err:
        fit(cfg)
    seconds = time.monotonic() - t0
    message = str(err.value)
    print(f"\nno data: failed in {seconds:.1f}s: {message}")
    assert str(root) in message and "16 videos tried" in message and "'undecodable': 16" in message
    (run,) = runs_named(env["uri"], "garbage")
    assert run.info.status == "FAILED" and "gave no batch" in run.data.tags["nlray.failure"]


def test_a_probed_manifest_with_no_good_training_video_fails_before_training():
    cfg = load_config("demo", ["data.root=s3://b/k"])
    df = pd.DataFrame({"uri": ["a", "b", "c"], "split": ["train", "train", "val"],
                       "status": ["undecodable", "missing", "ok"]})
    with pytest.raises(NoDataError, match=r"none of the 2 'train' videos probed ok.*undecodable"):
        require_usable_videos(cfg, df)


def kill_a_worker_after(uri: str, name: str, step: int, out: dict) -> None:
    """SIGKILL one Ray Train worker process once the run has logged ``step``; note the step it had reached."""
    try:
        _kill_a_worker_after(uri, name, step, out)
    except Exception as e:  # a thread's error would vanish: the test reports it
        out["error"] = repr(e)


def _kill_a_worker_after(uri: str, name: str, step: int, out: dict) -> None:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        runs = runs_named(uri, name)
        done = [s for s, _ in history(uri, runs[0].info.run_id, "train/loss")] if runs else []
        if done and max(done) >= step:
            workers = list_actors(address=out["address"], detail=True,
                                  filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")])
            out["killed_at"] = max(done)
            out["pid"] = workers[0].pid
            os.kill(workers[0].pid, signal.SIGKILL)
            return
        time.sleep(0.3)


def test_a_worker_killed_mid_run_restarts_from_the_latest_checkpoint_into_the_same_run(env):
    cfg = config(env, "name=killed", "train.steps=32", "train.log_every=2", "train.checkpoint_every=4",
                 "train.max_failures=2")
    seen: dict = {"address": ray.get_runtime_context().gcs_address}  # this test's Ray, whatever else runs
    # after step 10: two checkpoints (4, 8) reported, so the controller surely holds one when the kill comes
    killer = threading.Thread(target=kill_a_worker_after, args=(env["uri"], "killed", 10, seen), daemon=True)
    killer.start()
    res = fit(cfg)
    killer.join(timeout=5)
    assert "pid" in seen, f"the run ended before a worker could be killed: {seen}"
    (run,) = runs_named(env["uri"], "killed")
    assert run.info.run_id == res["run_id"] and run.info.status == "FINISHED" and res["step"] == 32
    steps = [s for s, _ in history(env["uri"], res["run_id"], "train/loss")]
    assert steps == list(range(2, 33, 2))  # the step axis never went back, no step logged twice
    (resumed,) = history(env["uri"], res["run_id"], "train/resumed_from_step")
    lost = seen["killed_at"] - resumed[1]
    print(f"\nworker pid {seen['pid']} killed after step {seen['killed_at']}; resumed from step {resumed[1]:.0f} "
          f"(lost {lost:.0f} steps, checkpoint interval 4)")
    assert resumed[1] % 4 == 0 and 0 <= lost <= 4 + 2  # + the steps run between the log and the kill
    assert run.data.tags["nlray.restarts"] == "1"


def test_a_cut_or_incomplete_latest_checkpoint_falls_back_to_the_previous_one(env):
    first = fit(config(env, "name=cut", "train.steps=8", "train.log_every=4", "train.checkpoint_every=4"))
    latest = Path(env["root"]) / "results" / "cut" / "step_00000008" / "model.pt"
    data = latest.read_bytes()
    latest.write_bytes(data[:len(data) // 2])  # an upload cut short
    res = fit(config(env, "name=cut", "train.steps=12", "train.log_every=4", "train.checkpoint_every=4"))
    assert res["run_id"] == first["run_id"] and res["step"] == 12
    (run,) = runs_named(env["uri"], "cut")
    assert "step_00000008" in run.data.tags["nlray.skipped_checkpoints"]
    assert [v for _, v in history(env["uri"], res["run_id"], "train/resumed_from_step")] == [4.0]
    (latest,) = (Path(env["root"]) / "results" / "cut").glob("step_00000012*")  # its own folder, after the fallback
    (latest / "model.pt").unlink()  # a file missing
    res = fit(config(env, "name=cut", "train.steps=16", "train.log_every=4", "train.checkpoint_every=4"))
    assert res["step"] == 16
    assert [v for _, v in history(env["uri"], res["run_id"], "train/resumed_from_step")] == [4.0, 8.0]
    assert [s for s, _ in history(env["uri"], res["run_id"], "train/loss")] == [4, 8, 12, 16]


@pytest.mark.parametrize("init_from, words", [
    ("0123456789abcdef0123456789abcdef", ["0123456789abcdef0123456789abcdef", "MLflow run"]),
    ("runs:/0123456789abcdef0123456789abcdef", ["0123456789abcdef0123456789abcdef"]),
    ("EMPTY_DIR", ["model.pt"]),
])
def test_a_bad_init_from_is_refused_on_the_driver_before_any_run_or_worker(env, tmp_path, init_from, words):
    if init_from == "EMPTY_DIR":
        init_from = words[0] = str(tmp_path)
        words.append("model.pt")
    name = f"badinit-{abs(hash(init_from)) % 1000}"
    with pytest.raises((ValueError, OSError)) as err:
        fit(config(env, f"name={name}", "train.steps=2", f"train.init_from={init_from}"))
    for word in words:
        assert word in str(err.value)
    assert runs_named(env["uri"], name) == []  # refused before an MLflow run (or a worker) existed


def test_a_long_clip_preset_will_not_train_from_random_weights_by_accident(env):
    with pytest.raises(ConfigError, match="--init-from"):
        fit(config(env, "name=random-long", preset="demo_128f"))
    assert runs_named(env["uri"], "random-long") == []


def test_a_restart_looks_in_the_run_folder_newest_step_first_a_refolded_step_before_its_original(tmp_path):
    cfg = load_config("demo", ["name=r", f"train.storage_path={tmp_path}"])
    for name in ("step_00000004", "step_00000008", "step_00000008_from00000004", "step_00000012.tmp", "notes"):
        (tmp_path / "r" / name).mkdir(parents=True)
    assert [Path(c.path).name for c in stored_checkpoints(cfg)] == [
        "step_00000008_from00000004", "step_00000008", "step_00000004"]
    assert stored_checkpoints(load_config("demo", ["name=none", f"train.storage_path={tmp_path}"])) == []


def test_a_new_mlflow_run_over_checkpoints_of_an_earlier_run_says_it_resumes_from_them(tmp_path, caplog):
    from nlray import tracking
    from nlray.train.trainer import warn_foreign_checkpoints

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    MlflowClient(uri).create_experiment("t-foreign", artifact_location=str(tmp_path / "artifacts"))
    cfg = load_config("demo", ["name=again", f"train.storage_path={tmp_path / 'results'}",
                               f"tracking.uri={uri}", "tracking.experiment=t-foreign"])
    run, resumed = tracking.start_or_resume_run(cfg, ["a", "b"])
    assert not resumed
    with caplog.at_level(logging.WARNING, logger="nlray"):
        warn_foreign_checkpoints(cfg, run)  # nothing stored under this name: nothing said
    assert "nlray.resumed_from_storage" not in run.tags() and "another --name" not in caplog.text
    (tmp_path / "results" / "again" / "step_00000400").mkdir(parents=True)
    with caplog.at_level(logging.WARNING, logger="nlray"):
        warn_foreign_checkpoints(cfg, run)
    assert run.tags()["nlray.resumed_from_storage"].endswith("again/step_00000400")
    assert "another --name" in caplog.text and "'again'" in caplog.text
