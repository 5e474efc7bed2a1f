"""nlray.train end to end on real parts: a local Ray with 2 Ray Train workers, the data on a moto S3 endpoint,
tracking on an `mlflow server` subprocess. One 32-frame-style run is trained, resumed, fine-tuned into a
long-clip model and evaluated; every check reads back through MlflowClient or the checkpoints on disk."""
from __future__ import annotations

import copy

import pytest
import torch
from mlflow.tracking import MlflowClient

from nlray.config import load_config
from nlray.train import checkpoint
from nlray.train.trainer import fit
from tiny import TINY


@pytest.fixture(scope="module")
def env(ray_local, s3_data, mlflow_server, tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    common = [f"data.root={s3_data}", f"data.cache_dir={root / 'cache'}", f"tracking.uri={mlflow_server}",
              "tracking.experiment=t-train", f"train.storage_path={root / 'results'}"]
    return {"common": common, "uri": mlflow_server, "root": root, "data": s3_data,
            "eval": [f"data.cache_dir={root / 'cache'}"]}  # the caller's: a stored config gives model and shape


def config(env, preset: str, *extra: str):
    return load_config(preset, [*TINY, *env["common"], *extra])


@pytest.fixture(scope="module")
def short_run(env):
    """The 32-frame-style stage: 2 workers, 40 steps."""
    cfg = config(env, "demo", "name=short", "train.steps=40")
    before = copy.deepcopy(cfg)
    res = fit(cfg)
    assert cfg == before  # fit derives its settings on copies: the caller's config is as it was
    return cfg, res


def history(uri: str, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in MlflowClient(uri).get_metric_history(run_id, key))


def test_two_workers_train_log_and_checkpoint(env, short_run):
    cfg, res = short_run
    client = MlflowClient(env["uri"])
    run = client.get_run(res["run_id"])
    assert run.info.status == "FINISHED" and run.info.run_name == "short"
    assert run.data.params["train.num_workers"] == "2" and run.data.params["model.nl_instantiation"]
    loss = history(env["uri"], res["run_id"], "train/loss")
    assert [s for s, _ in loss] == [8, 16, 24, 32, 40]
    # 64 clips an interval: noisy; later intervals must reach below where it started
    assert min(v for _, v in loss[2:]) < loss[0][1], f"loss did not fall: {loss}"
    for key in ("train/clip_top1", "train/lr", "train/clips_per_s", "train/data_wait_share",
                "data/bad_videos_total", "val/clip_top1", "val/video_top1", "val/video_top5"):
        assert key in run.data.metrics, key
    assert run.data.metrics["val/views"] == run.data.metrics["val/videos"] * 2  # 2 clips x 1 crop
    arts = {a.path for a in client.list_artifacts(res["run_id"])}
    assert {"config.yaml", "labels.txt", "checkpoint", "plots"} <= arts
    plots = {a.path for a in client.list_artifacts(res["run_id"], "plots")}
    assert {"plots/learning_curve.png", "plots/per_class_accuracy.png"} <= plots
    # Ray Train kept the latest 2 checkpoints (steps 20 and 40), each a full training state.
    dirs = sorted(p for p in (env["root"] / "results" / "short").glob("*/") if p.name.startswith("step_"))
    assert [p.name for p in dirs] == ["step_00000020", "step_00000040"]
    state = checkpoint.load(dirs[-1])
    assert state["meta"]["step"] == 40 and state["meta"]["mlflow_run_id"] == res["run_id"]
    assert state["optimizer"]["param_groups"][0]["momentum"] == 0.9


def test_resubmitting_the_same_name_resumes_at_its_step(env, short_run):
    _, first = short_run
    res = fit(config(env, "demo", "name=short", "train.steps=56"))
    assert res["run_id"] == first["run_id"] and res["step"] == 56
    steps = [s for s, _ in history(env["uri"], res["run_id"], "train/loss")]
    assert steps == [8, 16, 24, 32, 40, 48, 56]  # continued from step 40: no step logged twice


def test_long_clip_model_starts_from_the_short_run_with_bn_frozen(env, short_run):
    _, first = short_run
    cfg = config(env, "demo_128f", "name=long", "data.frames=16", "train.steps=4", "train.precise_bn_batches=0",
                 f"train.init_from={first['run_id']}")  # no statistics re-estimated first: frozen as they came
    res = fit(cfg)
    short_state = checkpoint.fetch_weights(first["run_id"], tracking_uri=env["uri"])
    long_state = checkpoint.fetch_weights(res["run_id"], tracking_uri=env["uri"])
    bn = [k for k in short_state if k.endswith("running_mean")]
    assert bn and all(torch.equal(short_state[k], long_state[k]) for k in bn)  # frozen: stats untouched
    convs = [k for k in short_state if k.endswith("weight") and short_state[k].dim() == 5]
    assert any(not torch.equal(short_state[k], long_state[k]) for k in convs)  # but it did train
    params = MlflowClient(env["uri"]).get_run(res["run_id"]).data.params
    assert params["data.frame_stride"] == "1" and params["train.freeze_bn"] == "True"


def test_init_from_a_mismatched_model_fails_on_the_driver(env, short_run):
    _, first = short_run
    cfg = config(env, "demo", "name=bad-init", "model.width=16", "train.steps=2",
                 f"train.init_from={first['run_id']}")
    with pytest.raises(ValueError, match="does not fit"):
        fit(cfg)


def test_evaluate_job_logs_multiview_metrics(env, short_run):
    from nlray.train.evaluate import run_evaluation

    _, first = short_run
    out = run_evaluation(ref=first["run_id"], clips=3, crops=3, tracking_uri=env["uri"], data=env["data"],
                         overrides=env["eval"])
    assert out["run_id"] == first["run_id"]
    assert out["eval/views"] == out["eval/videos"] * 9
    assert 0.0 <= out["eval/video_top1"] <= out["eval/video_top5"] <= 1.0
    metrics = MlflowClient(env["uri"]).get_run(first["run_id"]).data.metrics
    assert metrics["eval/video_top1"] == out["eval/video_top1"]


def test_evaluating_a_checkpoint_logs_into_an_eval_run_that_it_ends(env, short_run):
    from nlray.train.evaluate import run_evaluation

    cfg, first = short_run
    newest = checkpoint.stored_checkpoints(cfg)[0].path  # a checkpoint folder, not a run id
    out = run_evaluation(ref=newest, clips=1, crops=1, tracking_uri=env["uri"], data=env["data"],
                         overrides=env["eval"])
    assert out["run_id"] != first["run_id"]
    client = MlflowClient(env["uri"])
    run = client.get_run(out["run_id"])
    assert run.info.run_name == f"eval-{cfg.name}" and run.info.status == "FINISHED"
    assert run.data.metrics["eval/video_top1"] == out["eval/video_top1"]
    names = {a.path for a in client.list_artifacts(out["run_id"])}
    assert "eval_per_class_accuracy.csv" in names
