"""Everything MLflow: one run per training run (found again by name on resume), params, metrics, artifacts.

    run, resumed = start_or_resume_run(cfg, labels)   # on the driver
    run.log_metrics({"train/loss": 1.2}, step=20)      # anywhere: a Run is two strings, so it pickles
    run.end()                                          # FINISHED (or end("FAILED"))

The driver creates or finds the run and logs what it knows (params, config, label map, the final model,
plots); the rank-0 worker logs step metrics into the same run through the handle it was given in
``train_loop_config``. No other module imports mlflow.
"""
from __future__ import annotations

import functools
import platform
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

import numpy as np
import ray
import torch

import nlray
from nlray.config import Config, flatten, get, to_yaml
from nlray.secrets import redact

NAME_TAG = "nlray.name"
# Key settings as tags too, so runs of different presets line up in the MLflow UI's columns.
KEY_SETTINGS = {"backbone": "model.arch", "depth": "model.depth", "nonlocal_blocks": "model.nonlocal_blocks",
                "instantiation": "model.nl_instantiation", "nl_mode": "model.nl_mode",
                "frames": "data.frames", "frame_stride": "data.frame_stride"}
PARAM_BATCH = 100  # MLflow's limit of params per log_batch call
TEXT_MAX_BYTES = 1 << 20  # files of a logged folder up to this size are read as text and redacted (config.yaml)


def resolve_uri(uri: str) -> str:
    """``sqlite:///mlflow.db`` names a file relative to the driver's cwd; Ray workers run elsewhere."""
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + str(Path(uri.removeprefix("sqlite:///")).expanduser().resolve())
    if "://" not in uri:  # a plain folder: the file store
        return str(Path(uri).expanduser().resolve())
    return uri


@functools.lru_cache(maxsize=8)
def _client(uri: str):
    """One MlflowClient per process and tracking URI (a Run carries only the URI, so it pickles)."""
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


@dataclass(frozen=True)
class Run:
    """A handle on one MLflow run: its id and tracking URI. Picklable; passed to Ray Train workers."""

    id: str
    uri: str

    def __repr__(self) -> str:  # the URI may carry user:password@: a printed Run (logs, tracebacks) hides it
        return f"Run(id={self.id!r}, uri={redact(self.uri)!r})"

    def log_params(self, params: dict) -> None:
        from mlflow.entities import Param

        items = [Param(k, redact(str(v))[:6000]) for k, v in params.items()]
        for i in range(0, len(items), PARAM_BATCH):
            _client(self.uri).log_batch(self.id, params=items[i:i + PARAM_BATCH])

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        _client(self.uri).log_batch(self.id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()])

    def log_text(self, text: str, artifact_file: str) -> None:
        _client(self.uri).log_text(self.id, redact(text), artifact_file)

    def log_dir(self, local_dir: str | Path, artifact_path: str) -> None:
        with tmpdir() as tmp:
            _client(self.uri).log_artifacts(self.id, str(_redacted_tree(Path(local_dir), Path(tmp))), artifact_path)

    def log_png(self, path: Path) -> None:
        _client(self.uri).log_artifact(self.id, str(path), "plots")

    def set_tags(self, tags: dict[str, str]) -> None:
        for k, v in tags.items():
            _client(self.uri).set_tag(self.id, k, redact(str(v)))

    def tags(self) -> dict[str, str]:
        return dict(_client(self.uri).get_run(self.id).data.tags)

    def end(self, status: str = "FINISHED") -> None:
        _client(self.uri).set_terminated(self.id, status=status)

    def metric_history(self, key: str) -> list[tuple[int, float]]:
        """[(step, value), ...] of one metric, by step."""
        return sorted((m.step, m.value) for m in _client(self.uri).get_metric_history(self.id, key))

    def download(self, artifact_path: str, dst: str | Path) -> str:
        """A local copy of one artifact (file or folder) of this run; its path."""
        import mlflow

        return mlflow.artifacts.download_artifacts(run_id=self.id, artifact_path=artifact_path,
                                                   dst_path=str(dst), tracking_uri=self.uri)

    def log_model(self, model: torch.nn.Module, registered_name: str = "") -> None:
        """The final model through mlflow.pytorch (registered under a name when one is configured)."""
        import mlflow

        mlflow.set_tracking_uri(self.uri)
        with mlflow.start_run(run_id=self.id):
            # pickle, not MLflow 3's default pt2 export: tracing a 128-frame model needs an example input
            # and minutes of CPU; loading needs nlray importable, which serving nlray models needs anyway.
            mlflow.pytorch.log_model(model.cpu().eval(), name="model", serialization_format="pickle",
                                     registered_model_name=registered_name or None,
                                     pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", "nlray"])


def versions() -> dict[str, str]:
    return {"version.nlray": nlray.__version__, "version.ray": ray.__version__,
            "version.torch": torch.__version__, "version.python": platform.python_version()}


def find_run(cfg: Config) -> Optional[Run]:
    """The earlier run with this name in this experiment, if any."""
    uri = resolve_uri(cfg.tracking.uri)
    exp = _client(uri).get_experiment_by_name(cfg.tracking.experiment)
    if exp is None:
        return None
    runs = _client(uri).search_runs([exp.experiment_id], filter_string=f"tags.`{NAME_TAG}` = '{cfg.name}'",
                                    order_by=["attributes.start_time DESC"], max_results=1)
    return Run(runs[0].info.run_id, uri) if runs else None


def start_or_resume_run(cfg: Config, labels: list[str], extra_params: dict | None = None) -> tuple[Run, bool]:
    """(run, resumed): a new run, or the earlier run of the same name set back to RUNNING."""
    run = find_run(cfg)
    if run is not None:
        _client(run.uri).update_run(run.id, status="RUNNING")
        return run, True
    uri = resolve_uri(cfg.tracking.uri)
    exp = _client(uri).get_experiment_by_name(cfg.tracking.experiment)
    exp_id = exp.experiment_id if exp else _client(uri).create_experiment(cfg.tracking.experiment)
    tags = {NAME_TAG: cfg.name, **{k: redact(str(get(cfg, v))) for k, v in KEY_SETTINGS.items()},
            **{k: redact(str(v)) for k, v in cfg.tracking.tags.items()}}
    if cfg.tracking.parent_run:  # a child run: the MLflow UI nests it under its parent
        tags["mlflow.parentRunId"] = cfg.tracking.parent_run
    run = Run(_client(uri).create_run(exp_id, run_name=cfg.name, tags=tags).info.run_id, uri)
    run.log_params({**flatten(cfg), **versions(), "num_classes": len(labels), **(extra_params or {})})
    run.log_text(to_yaml(cfg), "config.yaml")
    run.log_text("\n".join(labels) + "\n", "labels.txt")
    return run, False


def _redacted_tree(src: Path, tmp: Path) -> Path:
    """``src``, or a copy of it under ``tmp`` whose small UTF-8 files (config.yaml, meta.json) are redacted."""
    changed = {}
    for path in (p for p in src.rglob("*") if p.is_file() and p.stat().st_size <= TEXT_MAX_BYTES):
        try:
            text = path.read_bytes().decode("utf-8")
        except UnicodeDecodeError:  # weights and other binaries
            continue
        if redact(text) != text:
            changed[path.relative_to(src)] = redact(text)
    if not changed:
        return src
    dst = tmp / src.name
    shutil.copytree(src, dst)
    for rel, text in changed.items():
        (dst / rel).write_bytes(text.encode("utf-8"))
    return dst


def learning_curve_png(run: Run, keys: Iterable[str], out: Path) -> Path:
    """A PNG of metric histories (loss, clip top-1, lr) against the global step."""
    plt = _pyplot()
    keys = list(keys)
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.2))
    for ax, key in zip(np.atleast_1d(axes), keys):
        hist = run.metric_history(key)
        ax.plot([s for s, _ in hist], [v for _, v in hist])
        ax.set_title(key)
        ax.set_xlabel("step")
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


def confusion_png(confusion: np.ndarray, labels: list[str], out: Path) -> Path:
    """Per-class accuracy bars beside the (row-normalised) confusion matrix."""
    plt = _pyplot()
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


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def tmpdir() -> tempfile.TemporaryDirectory:
    return tempfile.TemporaryDirectory(prefix="nlray-")
