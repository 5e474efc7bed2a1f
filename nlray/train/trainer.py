"""The driver: data -> MLflow run -> TorchTrainer.fit() -> final model, plots and multi-view validation.

    get the dataset (manifest) -> start or find the MLflow run -> initial weights (ImageNet / --init-from)
    -> TorchTrainer(train_func, datasets={"train": clips}) -> fit() -> log the model, evaluate, end the run
"""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import ray
from ray.data import DataContext, ExecutionOptions
from ray.train import CheckpointConfig, RunConfig
from ray.train import DataConfig as IngestConfig  # Ray Train's: how datasets reach the workers
from ray.train.torch import TorchTrainer

from nlray import plots, raycluster, tracking
from nlray.config import Config, ConfigError, to_yaml
from nlray.data import resolve_dataset
from nlray.data.pipeline import (bad_video_counts, bad_video_list, bad_video_log_name, build_train_dataset,
                                 has_split)
from nlray.data import storage
from nlray.data.synthetic import ensure_dataset_at, ensure_demo_dataset
from nlray.data.synthetic_spec import CLASSES, FLIP_LABEL_MAP, SPECS
from nlray.models import build_model
from nlray.secrets import credential_env, redact
from nlray.tracking import Run
from nlray.train import checkpoint, elastic
from nlray.train.evaluate import evaluate
from nlray.train.weights import initial_weights
from nlray.train.loop import NO_DATA_TAG, train_func
from nlray.train.optim import scaled_schedule

log = logging.getLogger("nlray")


def resolve_classes(cfg: Config, labels: list[str]) -> Config:
    """model.num_classes 0 means 'from the label map'; an explicit number must agree with it."""
    if cfg.model.num_classes not in (0, len(labels)):
        raise ConfigError(f"model.num_classes={cfg.model.num_classes} but the dataset's label map has "
                          f"{len(labels)} classes; set model.num_classes=0 to take it from the data")
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, num_classes=len(labels)))


def worker_resources(cfg: Config) -> dict[str, float]:
    """One train worker: its CPUs, a GPU, and a unit of the train node type's resource when it has one."""
    gpu = {"GPU": 1.0} if cfg.train.use_gpu else {}
    placement = raycluster.resource_request(cfg.cluster.train_resource, raycluster.TRAIN_RESOURCE)
    return {"CPU": cfg.train.cpus_per_worker, **gpu, **placement}


def place_synthetic_set(cfg: Config) -> Config:
    """With no data on a cluster of several nodes, the synthetic set goes once into the shared storage
    (``<train.storage_path>/datasets/synthetic-<data.synthetic>``), not into the driver's cache."""
    if cfg.data.root or not storage.is_s3(cfg.train.storage_path) or not raycluster.spans_nodes():
        return cfg
    uri = storage.join(cfg.train.storage_path, "datasets", f"synthetic-{cfg.data.synthetic}")
    log.info("no data given on a cluster of several nodes: the synthetic set at %s", uri)
    root = ensure_dataset_at(uri, SPECS[cfg.data.synthetic], endpoint_url=cfg.data.s3_endpoint_url)
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, root=root))


def with_mirror_pairs(cfg: Config, labels: list[str]) -> Config:
    """The synthetic sets' motion classes carry their own ``data.flip_label_map`` (a mirrored moving_left
    clip is a moving_right clip) when none is given; other datasets get only the map the user gives."""
    if cfg.data.flip_label_map or not set(labels) <= set(CLASSES):
        return cfg
    pairs = [list(p) for p in FLIP_LABEL_MAP if set(p) <= set(labels)]
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, flip_label_map=pairs))


def make_trainer(cfg: Config, labels: list[str], run: Run, init_ref, train_ds) -> TorchTrainer:
    path, fs = checkpoint.ray_train_storage(cfg)
    tcfg = cfg.train
    credentials = ray.put(credential_env())
    return TorchTrainer(
        train_func,
        # credentials as an object in the store, not in the config: Ray Train's state export (and Tune's
        # loggers) write train_loop_config out, where an object shows only its id
        train_loop_config={"cfg": to_yaml(cfg), "labels": labels, "run": run, "init_ref": init_ref,
                           "credentials": credentials},
        scaling_config=elastic.scaling_config(tcfg, worker_resources(cfg)),
        run_config=RunConfig(name=cfg.name, storage_path=path, storage_filesystem=fs,
                             failure_config=elastic.failure_config(tcfg),
                             checkpoint_config=CheckpointConfig(num_to_keep=tcfg.keep_checkpoints)),
        datasets={"train": train_ds},
        dataset_config=IngestConfig(execution_options=ingest_options()),
    )


def ingest_options() -> ExecutionOptions:
    """Ray Train's default ingest options (the driver's DataContext), less ``exclude_resources``: Train's
    default sets it, which Ray 2.60 deprecates with a warning in every run."""
    ctx = DataContext.get_current().execution_options
    return ExecutionOptions(resource_limits=ctx.resource_limits, preserve_order=ctx.preserve_order,
                            verbose_progress=ctx.verbose_progress)


class NoDataError(RuntimeError):
    """The training set gives no clip: every video is bad, or none is usable."""


def fit(cfg: Config) -> dict:
    """Train (or resume) the run named cfg.name; returns its final metrics, run id, checkpoint path and the
    number of classes. ``cfg`` is left as it was (the settings derived here are copies)."""
    check_initialisation(cfg)
    raycluster.connect(cfg.cluster.address, cfg.cluster.num_cpus, cfg.data.progress_interval_s)
    raycluster.require_shared_paths(cfg)  # before any work is scheduled
    cfg = place_synthetic_set(cfg)
    df, labels = resolve_dataset(cfg.data)
    require_usable_videos(cfg, df)
    cfg = resolve_classes(cfg, labels)
    cfg = with_mirror_pairs(cfg, labels)
    scaled, schedule = scaled_schedule(cfg.train, cfg.data.batch_size)
    uri = tracking.resolve_uri(cfg.tracking.uri)  # workers run in other directories
    cfg = dataclasses.replace(cfg, train=scaled, tracking=dataclasses.replace(cfg.tracking, uri=uri))
    init = initial_weights(cfg)  # a bad --init-from fails here, before a run or a worker exists
    dataset = tracking.manifest_dataset(df, labels, **dataset_identity(cfg))
    sizes = {"world_size": cfg.train.num_workers, "min_world_size": cfg.train.min_workers or cfg.train.num_workers}
    run, resumed = tracking.start_or_resume_run(cfg, labels, {**sizes, **schedule},
                                                dataset=dataset)
    log.info("MLflow run %s (%s) at %s", run.id, "resumed" if resumed else "new", redact(run.uri))
    if not resumed:
        warn_foreign_checkpoints(cfg, run)
    try:
        init_ref = ray.put(init) if init is not None else None
        train_ds = build_train_dataset(df, cfg.data, run_name=cfg.name, seed=cfg.train.seed,
                                       resources=raycluster.decoder_resources(cfg), labels=labels)
        run.set_tags({NO_DATA_TAG: ""})
        result = make_trainer(cfg, labels, run, init_ref, train_ds).fit()
        empty_epoch = run.tags().get(NO_DATA_TAG)
        if empty_epoch:
            raise NoDataError(no_data_message(cfg, df, int(empty_epoch)))
        out = finish(cfg, df, labels, run, result)
    except BaseException as e:
        run.set_tags({"nlray.failure": f"{type(e).__name__}: {e}"[:5000]})
        run.end("FAILED")
        raise
    run.end()
    return out


def dataset_identity(cfg: Config) -> dict[str, str]:
    """The dataset's name and source for MLflow: a root's (or a manifest's folder's) name and URI; the
    synthetic set as ``synthetic-<data.synthetic>`` at its cache folder."""
    if not cfg.data.root:  # resolve_dataset generated it already: this only returns its folder
        return {"name": f"synthetic-{cfg.data.synthetic}",
                "source": ensure_demo_dataset(cfg.data.cache_dir, SPECS[cfg.data.synthetic])}
    parts = cfg.data.root.rstrip("/").rsplit("/", 2)
    name = parts[-1].removesuffix(".parquet")
    if name == "manifest" and len(parts) > 1:  # <root>/manifest.parquet: the root's name
        name = parts[-2]
    return {"name": name, "source": cfg.data.root}


def warn_foreign_checkpoints(cfg: Config, run: Run) -> None:
    """A new MLflow run whose name has checkpoints in train.storage_path (an earlier run, tracked in another
    MLflow store) resumes from them: say so on the console and in a tag, with the way to start afresh."""
    found = checkpoint.stored_checkpoints(cfg)
    if found:
        where = redact(found[0].path)
        log.warning("run name %r has %d checkpoint(s) in train.storage_path from an earlier run that this MLflow "
                    "store does not know; training resumes from the newest that loads (%s). Give another --name "
                    "to start afresh.", cfg.name, len(found), where)
        run.set_tags({"nlray.resumed_from_storage": where})


def check_initialisation(cfg: Config) -> None:
    """A run needs a name; frozen BN (long clips) only makes sense over trained weights."""
    if not cfg.name:
        raise ConfigError("name is empty: every run needs a name (--name); the same name resumes")
    t = cfg.train
    if t.freeze_bn and not t.init_from and cfg.model.pretrained == "none" and not t.allow_random_init:
        raise ConfigError("train.freeze_bn=true with no --init-from and model.pretrained=none would train a "
                          "random network whose BN layers are frozen at identity: give --init-from <32-frame "
                          "run id or checkpoint> (long clips start from the 32-frame model: docs/paper.md, "
                          "Long clips), or set "
                          "train.allow_random_init=true to do it anyway")


def require_usable_videos(cfg: Config, df) -> None:
    """A probed manifest (prepare_kinetics --probe) whose training videos are all bad fails before training."""
    if "status" not in df.columns or not has_split(df, cfg.data.train_split):
        return
    rows = df[df["split"] == cfg.data.train_split]
    if not (rows["status"] == "ok").any():
        counts = rows["status"].value_counts().to_dict()
        raise NoDataError(f"{cfg.data.root or 'the dataset'}: none of the {len(rows)} "
                          f"{cfg.data.train_split!r} videos probed ok: {counts}")


def no_data_message(cfg: Config, df, epoch: int) -> str:
    """What an epoch that gave no batch tried: the dataset, its videos and the bad ones by reason."""
    tried = int((df["split"] == cfg.data.train_split).sum()) if "split" in df.columns else len(df)
    counts = bad_video_counts(bad_video_log_name(cfg.name, cfg.data.train_split))
    return (f"epoch {epoch} of {cfg.data.root or 'the synthetic set'} ({cfg.data.train_split!r} split) gave no "
            f"batch of {cfg.data.batch_size} clips on some worker: {tried} videos tried, bad videos by reason: "
            f"{counts or 'none'} (see bad_videos.tsv; too few good videos for "
            f"{cfg.train.num_workers} workers x data.batch_size={cfg.data.batch_size} is the other cause)")


def finish(cfg: Config, df, labels: list[str], run: Run, result) -> dict:
    """Log the final weights, model, plots; evaluate multi-view on the validation split."""
    with result.checkpoint.as_directory() as d:
        state = checkpoint.load(d)
        run.log_dir(d, "checkpoint")  # final weights + config + meta
    step = int(state["meta"]["step"])
    run.set_tags({"nlray.checkpoints": result.path, "nlray.final_step": str(step)})
    log_bad_videos(cfg, run)
    model = build_model(cfg.model, num_classes=cfg.model.num_classes)
    model.load_state_dict(state["model"])
    run.log_model(model, labels=labels, frames=cfg.data.frames, frame_stride=cfg.data.frame_stride,
                  crop_size=cfg.data.crop_size, registered_name=cfg.tracking.registered_model_name)
    metrics = validate(cfg, df, labels, run, state["model"], step)
    with tracking.tmpdir() as tmp:
        curves = {key: run.metric_history(key) for key in ("train/loss", "train/clip_top1", "train/lr")}
        png = plots.learning_curves_png(curves, Path(tmp) / "learning_curve.png")
        run.log_png(png)
    return {"run_id": run.id, "step": step, "checkpoint": result.path, "num_classes": len(labels), **metrics}


def log_bad_videos(cfg: Config, run: Run) -> None:
    """The bad videos met in training, by reason, as an artifact (their counts are metrics already)."""
    rows = bad_video_list(bad_video_log_name(cfg.name, cfg.data.train_split))
    text = "uri\treason\tdetail\n" + "".join(f"{u}\t{r}\t{d}\n" for u, r, d in rows)
    run.log_text(text, "bad_videos.tsv")


def validate(cfg: Config, df, labels: list[str], run: Run, model_state: dict, step: int) -> dict:
    if not has_split(df, cfg.data.val_split):
        log.warning("no %r split in the manifest: skipping validation", cfg.data.val_split)
        return {}
    clips = cfg.train.val_num_clips or cfg.data.eval_num_clips
    crops = cfg.train.val_num_crops or cfg.data.eval_num_crops
    # Spread over the cluster: one scorer a training worker by default, a GPU each on GPUs, else the CPUs a
    # training worker had: with the same decoder pool as training, they fit where training did.
    use_gpu = cfg.train.use_gpu and raycluster.has_gpus()
    actors = cfg.train.val_actors or cfg.train.num_workers
    cpus = cfg.train.cpus_per_worker
    log.info("validation: %d scorer actor(s), %s each", actors, "1 GPU" if use_gpu else f"{cpus:g} CPU")
    scores = evaluate(cfg, df, model_state, num_clips=clips, num_crops=crops, actors=actors,
                      use_gpu=use_gpu, cpus_per_actor=cpus)
    metrics = {f"val/{k}": v for k, v in scores.metrics().items()}
    metrics["val/views_per_video"] = clips * crops
    run.log_metrics(metrics, step)
    with tracking.tmpdir() as tmp:
        run.log_png(plots.per_class_accuracy_png(scores.confusion(), labels, Path(tmp) / "per_class_accuracy.png"))
    run.log_text(plots.per_class_accuracy_csv(scores.confusion(), labels), "per_class_accuracy.csv")
    return metrics
