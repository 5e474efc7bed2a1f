"""Everything MLflow: one run per training run (found again by name on resume), params, metrics, artifacts.

The driver creates or finds the run and logs what it knows (params, config, label map, the final model,
plots); the rank-0 worker logs step metrics into the same run by id. Nothing else writes to MLflow.
"""
from __future__ import annotations

import platform
import tempfile
import time
from pathlib import Path
from typing import Iterable, Optional

import numpy as np

from nlray.config import Config, flatten, to_yaml

NAME_TAG = "nlray.name"
# Key settings as tags too, so runs of different presets line up in the MLflow UI's columns.
KEY_SETTINGS = {"backbone": "model.arch", "depth": "model.depth", "nonlocal_blocks": "model.nonlocal_blocks",
                "instantiation": "model.nl_instantiation", "nl_mode": "model.nl_mode",
                "frames": "data.frames", "frame_stride": "data.frame_stride"}


def resolve_uri(uri: str) -> str:
    """``sqlite:///mlflow.db`` names a file relative to the driver's cwd; Ray workers run elsewhere."""
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + str(Path(uri.removeprefix("sqlite:///")).expanduser().resolve())
    if "://" not in uri:  # a plain folder: the file store
        return str(Path(uri).expanduser().resolve())
    return uri


def client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=resolve_uri(uri))


def versions() -> dict[str, str]:
    import ray
    import torch

    import nlray

    return {"version.nlray": nlray.__version__, "version.ray": ray.__version__,
            "version.torch": torch.__version__, "version.python": platform.python_version()}


def _experiment_id(c, name: str) -> str:
    exp = c.get_experiment_by_name(name)
    return exp.experiment_id if exp else c.create_experiment(name)


def find_run(cfg: Config) -> Optional[str]:
    """The run id of an earlier run with this name in this experiment, if any."""
    c = client(cfg.tracking.uri)
    exp = c.get_experiment_by_name(cfg.tracking.experiment)
    if exp is None:
        return None
    runs = c.search_runs([exp.experiment_id], filter_string=f"tags.`{NAME_TAG}` = '{cfg.name}'",
                         order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0].info.run_id if runs else None


def start_or_resume_run(cfg: Config, labels: list[str], extra_params: dict | None = None) -> tuple[str, bool]:
    """(run id, resumed): a new run, or the earlier run of the same name set back to RUNNING."""
    c = client(cfg.tracking.uri)
    run_id = find_run(cfg)
    if run_id is not None:
        c.update_run(run_id, status="RUNNING")
        return run_id, True
    tags = {NAME_TAG: cfg.name, **{k: str(_get(cfg, v)) for k, v in KEY_SETTINGS.items()}}
    run = c.create_run(_experiment_id(c, cfg.tracking.experiment), run_name=cfg.name, tags=tags)
    run_id = run.info.run_id
    params = {**flatten(cfg), **versions(), "num_classes": len(labels), **(extra_params or {})}
    log_params(run_id, cfg.tracking.uri, params)
    log_text(run_id, cfg.tracking.uri, to_yaml(cfg), "config.yaml")
    log_text(run_id, cfg.tracking.uri, "\n".join(labels) + "\n", "labels.txt")
    return run_id, False


def _get(cfg: Config, dotted: str):
    obj = cfg
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def log_params(run_id: str, uri: str, params: dict) -> None:
    from mlflow.entities import Param

    items = [Param(k, str(v)[:6000]) for k, v in params.items()]
    c = client(uri)
    for i in range(0, len(items), 100):  # MLflow's batch limit is 100 params
        c.log_batch(run_id, params=items[i:i + 100])


def log_metrics(run_id: str, uri: str, metrics: dict[str, float], step: int) -> None:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    c = client(uri)
    c.log_batch(run_id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()])


def log_text(run_id: str, uri: str, text: str, artifact_file: str) -> None:
    client(uri).log_text(run_id, text, artifact_file)


def log_dir(run_id: str, uri: str, local_dir: str | Path, artifact_path: str) -> None:
    client(uri).log_artifacts(run_id, str(local_dir), artifact_path)


def set_tags(run_id: str, uri: str, tags: dict[str, str]) -> None:
    c = client(uri)
    for k, v in tags.items():
        c.set_tag(run_id, k, v)


def end_run(run_id: str, uri: str, status: str = "FINISHED") -> None:
    client(uri).set_terminated(run_id, status=status)


def log_model(run_id: str, uri: str, model, registered_name: str = "") -> None:
    """The final model through mlflow.pytorch (registered under a name when one is configured)."""
    import mlflow
    import torch

    mlflow.set_tracking_uri(resolve_uri(uri))
    with mlflow.start_run(run_id=run_id):
        # pickle, not MLflow 3's default pt2 export: tracing a 128-frame model needs an example input
        # and minutes of CPU; loading needs nlray importable, which serving nlray models needs anyway.
        mlflow.pytorch.log_model(model.cpu().eval(), name="model", serialization_format="pickle",
                                 registered_model_name=registered_name or None,
                                 pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", "nlray"])


def learning_curve_png(run_id: str, uri: str, keys: Iterable[str], out: Path) -> Path:
    """A PNG of metric histories (loss, clip top-1, lr) against the global step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    c = client(uri)
    keys = list(keys)
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.2))
    for ax, key in zip(np.atleast_1d(axes), keys):
        hist = sorted(c.get_metric_history(run_id, key), key=lambda m: m.step)
        ax.plot([m.step for m in hist], [m.value for m in hist])
        ax.set_title(key)
        ax.set_xlabel("step")
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


def confusion_png(confusion: np.ndarray, labels: list[str], out: Path) -> Path:
    """Per-class accuracy bars beside the (row-normalised) confusion matrix."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = confusion.sum(1, keepdims=True).clip(min=1)
    norm = confusion / rows  # (K, K), rows sum to 1
    k = len(labels)
    fig, (a, b) = plt.subplots(1, 2, figsize=(min(4 + 0.3 * k, 30), min(3 + 0.25 * k, 30)))
    a.barh(range(k), np.diag(norm))
    a.set_yticks(range(k), labels if k <= 60 else [""] * k)
    a.set_xlim(0, 1)
    a.set_title("per-class video top-1")
    b.imshow(norm, vmin=0, vmax=1, cmap="viridis")
    b.set_title("confusion (rows: true)")
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


def log_png(run_id: str, uri: str, path: Path) -> None:
    client(uri).log_artifact(run_id, str(path), "plots")


def tmpdir() -> tempfile.TemporaryDirectory:
    return tempfile.TemporaryDirectory(prefix="nlray-")
