"""Checkpoints: what a training state is on disk, and where initial weights come from.

A checkpoint is a directory (Ray Train persists it to RunConfig.storage_path):
    model.pt       state dict of the bare model (no DDP prefix), loaded with weights_only=True
    optimizer.pt   SGD state
    meta.json      step, epoch, schedule, label map, MLflow run id
    config.yaml    the resolved config
"""
from __future__ import annotations

import io
import json
import pickle
import posixpath
import re
import tempfile
from pathlib import Path
from typing import Any, Optional

import pyarrow.fs
import ray.train
import torch

from nlray.config import Config, ConfigError, to_yaml
from nlray.data.storage import MissingObjectError, join, pyarrow_filesystem, read_bytes
from nlray.secrets import redact
from nlray.tracking import Run
from nlray.uris import is_run_ref

STEP_DIR = re.compile(r"^step_(\d{8})(_from\d{8})?$")  # checkpoint folders the loop names: step_<step>[_from<step>]


def save(dirpath: str | Path, *, model_state: dict, optimizer_state: Optional[dict], meta: dict,
         cfg: Config) -> Path:
    d = Path(dirpath)
    d.mkdir(parents=True, exist_ok=True)
    torch.save(model_state, d / "model.pt")
    if optimizer_state is not None:
        torch.save(optimizer_state, d / "optimizer.pt")
    (d / "meta.json").write_text(json.dumps(meta, indent=1))
    (d / "config.yaml").write_text(to_yaml(cfg))
    return d


def load(dirpath: str | Path) -> dict[str, Any]:
    """{'model': state dict, 'optimizer': state or None, 'meta': dict} from a checkpoint directory."""
    d = Path(dirpath)
    if not (d / "model.pt").is_file():
        raise FileNotFoundError(f"{d} is not an nlray checkpoint: no model.pt in it")
    opt = d / "optimizer.pt"
    return {"model": torch.load(d / "model.pt", map_location="cpu", weights_only=True),
            "optimizer": torch.load(opt, map_location="cpu", weights_only=True) if opt.is_file() else None,
            "meta": json.loads((d / "meta.json").read_text()) if (d / "meta.json").is_file() else {}}


def ray_train_storage(cfg: Config) -> tuple[str, Optional[pyarrow.fs.FileSystem]]:
    """RunConfig storage: (path, pyarrow filesystem or None). S3 goes through our configured filesystem
    because Ray's own s3:// resolution ignores a custom endpoint."""
    path = cfg.train.storage_path
    if path.startswith("s3://"):
        fs, fs_path = pyarrow_filesystem(path, endpoint_url=cfg.data.s3_endpoint_url)
        return fs_path, fs
    return str(Path(path.removeprefix("file://")).expanduser().resolve()), None


def stored_checkpoints(cfg: Config) -> list["ray.train.Checkpoint"]:
    """The ``step_*`` checkpoints in this run's folder (``<storage>/<name>``), newest first.

    Ray Train hands a restarted worker group the checkpoint its controller registered last; one a worker
    uploaded just before its node was lost may never have been registered, yet it is whole on storage.
    """
    root, fs = ray_train_storage(cfg)
    fs = fs or pyarrow.fs.LocalFileSystem()
    folder = posixpath.join(root, cfg.name)
    infos = fs.get_file_info(pyarrow.fs.FileSelector(folder, allow_not_found=True))
    found = [(int(m.group(1)), bool(m.group(2)), i.base_name) for i in infos
             if i.type == pyarrow.fs.FileType.Directory and (m := STEP_DIR.match(i.base_name))]
    # newest step first; of two folders for one step, the _from one was written after the other
    return [ray.train.Checkpoint(path=posixpath.join(folder, name), filesystem=fs)
            for _, _, name in sorted(found, reverse=True)]


def load_latest_good(candidates: list["ray.train.Checkpoint"]) -> tuple[dict[str, Any], list[str]]:
    """(state, skipped): the first of ``candidates`` (newest first) that loads; ``skipped`` names each
    before it that did not (cut short, a file missing) and why."""
    skipped = []
    for candidate in candidates:
        try:
            with candidate.as_directory() as d:
                state = load(d)
            if "step" not in state["meta"]:
                raise ValueError("meta.json has no step")
            return state, skipped
        except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as e:
            skipped.append(f"{candidate.path}: {type(e).__name__}: {str(e)[:200]}")
    raise RuntimeError(f"no checkpoint of this run loads: {skipped}")


def _load_bytes(data: bytes, what: str) -> dict:
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:  # a pickle that is not plain tensors, or not a torch file at all
        raise ValueError(f"{what} is not a weights-only torch state dict: {e}") from None
    if not isinstance(state, dict):
        raise ValueError(f"{what} holds a {type(state).__name__}, not a state dict")
    return state


def fetch_weights(init_from: str, *, tracking_uri: str, endpoint_url: str = "") -> dict:
    """Model state dict from an MLflow run id, ``runs:/<id>[/path]``, or a checkpoint dir / .pt URI."""
    if is_run_ref(init_from):
        return _from_mlflow(init_from, tracking_uri)
    uri = init_from if init_from.endswith(".pt") else join(init_from, "model.pt")
    try:
        data = read_bytes(uri, endpoint_url=endpoint_url)
    except MissingObjectError:
        raise ValueError(f"--init-from {init_from!r}: no checkpoint there ({uri} does not exist); give a "
                         "checkpoint directory holding model.pt, a .pt file, or an MLflow run id") from None
    return _load_bytes(data, uri)


def fetch_trained(ref: str, *, tracking_uri: str, endpoint_url: str = "") -> tuple[str, dict, dict]:
    """(stored config YAML, model state, meta) of a finished run (MLflow id / runs:/) or a checkpoint
    directory URI. The YAML is someone else's: read it with ``config.from_stored``, which takes only the
    model and clip shape from it."""
    if is_run_ref(ref):
        run_id = ref.removeprefix("runs:/").split("/")[0]
        with tempfile.TemporaryDirectory() as tmp:
            try:
                d = Run(run_id, tracking_uri).download("checkpoint", tmp)
            except Exception as e:
                raise ConfigError(f"{ref!r}: MLflow run {run_id} at {tracking_uri} has no final checkpoint "
                                  f"artifact (did it finish?): {' '.join(str(e).split())[:300]}") from None
            state = load(d)
            text = (Path(d) / "config.yaml").read_text()
        return text, state["model"], state["meta"]
    try:
        read = lambda name: read_bytes(join(ref, name), endpoint_url=endpoint_url)  # noqa: E731
        meta = json.loads(read("meta.json"))
        return read("config.yaml").decode(), _load_bytes(read("model.pt"), join(ref, "model.pt")), meta
    except MissingObjectError as e:
        raise ConfigError(f"--checkpoint {ref!r}: not a checkpoint directory ({e}); give a folder holding "
                          "model.pt, config.yaml and meta.json") from None


def _from_mlflow(ref: str, tracking_uri: str) -> dict:
    run_id, _, path = ref.removeprefix("runs:/").partition("/")
    path = path or "checkpoint"
    if not path.endswith(".pt"):
        path = path.rstrip("/") + "/model.pt"
    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = Run(run_id, tracking_uri).download(path, tmp)
        except Exception as e:
            raise ValueError(redact(f"--init-from {ref!r}: no artifact {path!r} in MLflow run {run_id} at "
                                    f"{tracking_uri}: {e}")) from None
        return _load_bytes(Path(local).read_bytes(), f"runs:/{run_id}/{path}")
