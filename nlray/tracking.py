"""Everything MLflow: one run per training run (found again by name on resume), params, metrics, artifacts.

    run, resumed = start_or_resume_run(cfg, labels, dataset=manifest_dataset(df, labels, name=..., source=...))
    run.log_metrics({"train/loss": 1.2}, step=20)      # anywhere: a Run is two strings, so it pickles
    with run.system_metrics("worker0", interval_s=10):  # CPU, memory, disk, network, GPU: system/worker0/...
        ...
    run.end()                                          # FINISHED (or end("FAILED"))

The driver creates or finds the run and logs what it knows (params, config, label map, the dataset as an
MLflow input, where the run came from, the final model, plots); the rank-0 worker logs step metrics
and each node its system metrics into the same run, through the handle they were given. No other module
imports mlflow (the plots are nlray.plots').
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import torch

from nlray.config import Config, flatten, get, to_yaml
from nlray.provenance import source_tags, versions
from nlray.secrets import redact

NAME_TAG = "nlray.name"
# Key settings as tags too, so runs of different presets line up in the MLflow UI's columns.
KEY_SETTINGS = {"backbone": "model.arch", "depth": "model.depth", "nonlocal_blocks": "model.nonlocal_blocks",
                "instantiation": "model.nl_instantiation", "nl_mode": "model.nl_mode",
                "frames": "data.frames", "frame_stride": "data.frame_stride"}
PARAM_BATCH = 100  # MLflow's limit of params per log_batch call
TEXT_MAX_BYTES = 1 << 20  # files of a logged folder up to this size are read as text and redacted (config.yaml)
DATASET_CONTEXT = ("mlflow.data.context", "training")  # the input tag that fills the runs table's Dataset column
# MLflow 3's UI opens an experiment of no kind on its GenAI pages (traces, evaluations); a training
# experiment opens on the runs table, charts and Compare
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")
# MLflow prints "View run <name> at: <tracking URI>/#/..." at every run end, into the job's log: off (a URI
# may once have held a password; the run's page is found from the UI or jobs/compare.py).
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")


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

    def record(self) -> "RunRecord":
        """What the tracking store holds on this run: name, status, params, tags, latest metrics."""
        got = _client(self.uri).get_run(self.id)
        return RunRecord(self, got.info.run_name or "", got.info.status, got.info.start_time or 0,
                         dict(got.data.params), dict(got.data.tags), dict(got.data.metrics))

    @contextlib.contextmanager
    def system_metrics(self, node_id: Optional[str], interval_s: float) -> Iterator[None]:
        """While the block runs, MLflow's monitor samples CPU, memory, disk, network (and NVIDIA GPUs, with
        nvidia-ml-py) every ``interval_s`` seconds into this run as ``system/<node_id>/...``; 0 = off."""
        if interval_s < 0:
            raise ValueError(f"interval_s={interval_s}: the sampling interval must be >= 0 seconds (0 = off)")
        if interval_s == 0:
            yield
            return
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        # resume_logging: a resumed run's samples continue after its last system step instead of overwriting
        monitor = SystemMetricsMonitor(self.id, sampling_interval=interval_s, resume_logging=True,
                                       node_id=node_id or None, tracking_uri=self.uri)
        monitor.start()
        try:
            yield
        finally:
            monitor.finish()  # stops the sampling thread and flushes what it has not logged yet

    def log_dataset(self, dataset: "DatasetInfo") -> None:
        """The training set as this run's MLflow input (the runs table's Dataset column)."""
        from mlflow.entities import Dataset, DatasetInput, InputTag
        from mlflow.exceptions import MlflowException

        entity = Dataset(name=dataset.name, digest=dataset.digest, source_type=dataset.source_type(),
                         source=json.dumps({"uri": dataset.source}), schema=json.dumps(MANIFEST_SCHEMA),
                         profile=json.dumps(dataset.profile()))
        inputs = [DatasetInput(entity, [InputTag(*DATASET_CONTEXT)])]
        try:
            _client(self.uri).log_inputs(self.id, datasets=inputs)
        except MlflowException as e:
            # Runs of one experiment that start together (a table's trials) race to insert the same dataset
            # row: the loser gets the store's unique-key error (sqlite, postgres, mysql wording), and the
            # row it lost to is there now, so once more finds it.
            if not any(w in str(e).lower() for w in ("unique constraint", "duplicate key", "duplicate entry")):
                raise
            _client(self.uri).log_inputs(self.id, datasets=inputs)

    def metric_history(self, key: str, *, by_time: bool = False) -> list[tuple[int, float]]:
        """[(step, value), ...] of one metric, by step (or in the order they were logged)."""
        history = _client(self.uri).get_metric_history(self.id, key)
        order = (lambda m: (m.timestamp, m.step)) if by_time else (lambda m: (m.step, m.value))
        return [(m.step, m.value) for m in sorted(history, key=order)]

    def download(self, artifact_path: str, dst: str | Path) -> str:
        """A local copy of one artifact (file or folder) of this run; its path."""
        import mlflow

        return mlflow.artifacts.download_artifacts(run_id=self.id, artifact_path=artifact_path,
                                                   dst_path=str(dst), tracking_uri=self.uri)

    def log_model(self, model: torch.nn.Module, *, labels: list[str], frames: int, frame_stride: int,
                  crop_size: int, registered_name: str = "") -> None:
        """The final model through mlflow.pytorch as a torch.export program (MLflow's "pt2" format), with a
        signature, the label map and the expected input in its metadata (registered under a name when one is
        configured).

        Input: float32 [B, 3, frames, crop_size, crop_size] (B any), RGB normalised as in training
        (``normalize_on_device``); output: float32 [B, len(labels)] class scores, column i = labels[i].
        """
        import mlflow
        from mlflow.models import ModelSignature
        from mlflow.types import Schema, TensorSpec

        from nlray.data.transforms import IMAGENET_MEAN, IMAGENET_STD

        classes = getattr(getattr(model, "fc", None), "out_features", len(labels))
        if classes != len(labels):  # the signature and the label map would describe another model
            raise ValueError(f"the model has {classes} outputs but the label map {len(labels)} classes")
        model = model.cpu().eval()
        shape = (3, frames, crop_size, crop_size)
        # -1: the batch is left dynamic (mlflow exports it as torch.export's Dim.AUTO); T, H, W stay the
        # trained clip's, so pyfunc refuses another size with a clear error instead of a shape failure inside.
        signature = ModelSignature(inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, *shape))]),
                                   outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, len(labels)))]))
        # In eval mode a test_head="conv" model returns log-probabilities (softmax of them is the class
        # probabilities averaged over the fully convolutional test's positions); "pool" returns logits.
        scores = "log_probs" if getattr(model, "test_head", "pool") == "conv" else "logits"
        metadata = {"nlray.labels": list(labels),
                    "nlray.input": {"layout": "B, C, T, H, W", "dtype": "float32", "channels": "RGB",
                                    "frames": frames, "frame_stride": frame_stride, "crop_size": crop_size,
                                    "normalisation": "(x / 255 - mean) / std per channel, x uint8 RGB",
                                    "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)},
                    "nlray.output": {"shape": "B, num_classes", "scores": scores, "column": "index in nlray.labels"}}
        # pt2 traces the example; a bare ndarray example is also stored as JSON, input_example.json plus an
        # indented serving_input_example.json (a 2×3×32×224² clip of zeros: 48 + 167 MB, more than the
        # weights), and run through the model once more to validate it. A list of one ndarray is traced but
        # not stored (MLflow's example writer refuses arrays in a list) and keeps the pyfunc flavour (a
        # torch.Tensor example would drop it). Batch 2: export turns a size-1 dimension into a constant.
        # Zeros: only the shape is traced (fake tensors), and pages never written cost no memory.
        example = [np.zeros((2, *shape), np.float32)]
        mlflow.set_tracking_uri(self.uri)
        with tmpdir() as tmp, mlflow.start_run(run_id=self.id):
            labels_txt = Path(tmp) / "labels.txt"  # one class name a line, line i = output column i
            labels_txt.write_text("".join(f"{name}\n" for name in labels), encoding="utf-8")
            # no_grad: the inference graph; with gradients on, the non-local blocks' CPU attention splits its
            # queries by torch's thread count (nonlocal_block._query_parts), which the export would bake in.
            with torch.no_grad():
                # pt2, not pickle: mlflow.pytorch.load_model unpickles a pickled model, i.e. runs whatever
                # code the artifact holds; a pt2 archive is a graph plus raw weights that MLflow checks to be
                # pickle-free before loading, and it loads without nlray installed.
                mlflow.pytorch.log_model(model, name="model", serialization_format="pt2", signature=signature,
                                         input_example=example, metadata=metadata, extra_files=[str(labels_txt)],
                                         registered_model_name=registered_name or None,
                                         pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"])


@dataclass(frozen=True)
class RunRecord:
    """One run as read back from the tracking store (jobs/compare.py)."""

    run: Run
    name: str
    status: str
    start_time: int  # ms since the epoch
    params: dict[str, str]
    tags: dict[str, str]
    metrics: dict[str, float]  # the latest value of each


# The manifest columns the digest covers, as MLflow's column spec (Schema.to_dict()) under "mlflow_colspec".
MANIFEST_SCHEMA = {"mlflow_colspec": [{"type": "string", "name": c, "required": True}
                                      for c in ("uri", "label", "split")]}


@dataclass(frozen=True)
class DatasetInfo:
    """A dataset as an MLflow input: its name, where it is (redacted), a digest of its manifest, its size."""

    name: str
    source: str
    digest: str
    videos: dict[str, int] = field(default_factory=dict)  # split -> videos
    num_classes: int = 0

    def source_type(self) -> str:
        return self.source.split("://", 1)[0] if "://" in self.source else "local"

    def profile(self) -> dict[str, int]:
        return {"videos": sum(self.videos.values()), **{f"videos_{k}": v for k, v in self.videos.items()},
                "num_classes": self.num_classes}


def manifest_dataset(df, labels: list[str], *, name: str, source: str) -> DatasetInfo:
    """``df`` (a manifest: uri, label, split columns) as a DatasetInfo; the digest is a SHA-256 of its sorted
    (uri, label, split) rows, so it changes when a video, a label or a split does, and not with row order."""
    missing = [c for c in ("uri", "label", "split") if c not in df.columns]
    if missing:
        raise ValueError(f"manifest lacks columns {missing}: the dataset digest needs uri, label and split")
    rows = sorted(zip(df["uri"].astype(str), df["label"].astype(str), df["split"].astype(str)))
    digest = hashlib.sha256("".join(f"{u}\t{y}\t{s}\n" for u, y, s in rows).encode()).hexdigest()[:16]
    videos = {str(k): int(v) for k, v in sorted(df["split"].astype(str).value_counts().items())}
    return DatasetInfo(name, redact(source), digest, videos, len(labels))


def find_run(cfg: Config) -> Optional[Run]:
    """The earlier run with this name in this experiment, if any."""
    uri = resolve_uri(cfg.tracking.uri)
    exp = _client(uri).get_experiment_by_name(cfg.tracking.experiment)
    if exp is None:
        return None
    runs = _client(uri).search_runs([exp.experiment_id], filter_string=f"tags.`{NAME_TAG}` = '{cfg.name}'",
                                    order_by=["attributes.start_time DESC"], max_results=1)
    return Run(runs[0].info.run_id, uri) if runs else None


def start_or_resume_run(cfg: Config, labels: list[str], extra_params: dict | None = None,
                        dataset: Optional[DatasetInfo] = None) -> tuple[Run, bool]:
    """(run, resumed): a new run (with its source tags, and ``dataset`` as its input), or the earlier run of
    the same name set back to RUNNING."""
    run = find_run(cfg)
    if run is not None:
        _client(run.uri).update_run(run.id, status="RUNNING")
        return run, True
    uri = resolve_uri(cfg.tracking.uri)
    exp = _client(uri).get_experiment_by_name(cfg.tracking.experiment)
    exp_id = exp.experiment_id if exp else _client(uri).create_experiment(cfg.tracking.experiment)
    if exp is None or EXPERIMENT_KIND[0] not in exp.tags:  # not one a user has set another kind on
        _client(uri).set_experiment_tag(exp_id, *EXPERIMENT_KIND)
    tags = {NAME_TAG: cfg.name, **{k: redact(str(get(cfg, v))) for k, v in KEY_SETTINGS.items()},
            **source_tags(), **{k: redact(str(v)) for k, v in cfg.tracking.tags.items()}}
    if cfg.tracking.parent_run:  # a child run: the MLflow UI nests it under its parent
        tags["mlflow.parentRunId"] = cfg.tracking.parent_run
    run = Run(_client(uri).create_run(exp_id, run_name=cfg.name, tags=tags).info.run_id, uri)
    run.log_params({**flatten(cfg), **versions(), "num_classes": len(labels), **(extra_params or {})})
    run.log_text(to_yaml(cfg), "config.yaml")
    run.log_text("\n".join(labels) + "\n", "labels.txt")
    if dataset is not None:
        run.log_dataset(dataset)
    return run, False


def lookup_run(uri: str, ref: str) -> Optional[Run]:
    """The run with id ``ref``, else the newest run named ``ref`` (its nlray.name tag or its MLflow run name)
    in any active experiment; None when there is none."""
    from mlflow.exceptions import MlflowException

    client = _client(uri)
    try:
        return Run(client.get_run(ref.removeprefix("runs:/").strip("/")).info.run_id, uri)
    except MlflowException:  # not an id of this store: try it as a name
        pass
    exp_ids = [e.experiment_id for e in client.search_experiments()]
    quoted = ref.replace("'", "\\'")
    found = [r for f in (f"tags.`{NAME_TAG}` = '{quoted}'", f"attributes.run_name = '{quoted}'")
             for r in client.search_runs(exp_ids, filter_string=f, order_by=["attributes.start_time DESC"],
                                         max_results=1)] if exp_ids else []
    newest = max(found, key=lambda r: r.info.start_time or 0, default=None)
    return Run(newest.info.run_id, uri) if newest else None


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


def tmpdir() -> tempfile.TemporaryDirectory:
    return tempfile.TemporaryDirectory(prefix="nlray-")
