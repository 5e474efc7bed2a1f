"""The manifest: one Parquet row per video (uri, label, label_id, split, size, video_id, ...).

Built from a dataset root by ``nlray.data.dataset.build_manifest``, one module per dataset layout
(``layout_kinetics``: the official CSVs; ``layout_lists``: ``path label`` lists). This module holds
what every layout shares (the columns, split names, ``finalise``) and the Parquet reading/writing.

The label map is the sorted class names (index = label_id); it is stored in the Parquet file's
metadata and as ``labels.json`` beside it.
"""
from __future__ import annotations

import io
import json
from typing import Optional

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from nlray.data import storage

MANIFEST_COLUMNS = ("uri", "label", "label_id", "split", "size", "video_id")
SPLIT_ALIASES = {"train": "train", "training": "train", "validate": "val", "validation": "val",
                 "val": "val", "test": "test", "testing": "test"}
LABELS_KEY = b"nlray.labels"  # Parquet schema metadata holding the JSON label list


class ManifestError(ValueError):
    """A dataset root or annotation file that cannot be turned into a manifest."""


def normalise_split(name: str) -> str:
    """``validate`` / ``validation`` -> ``val``; train / val / test pass through."""
    split = SPLIT_ALIASES.get(str(name).strip().lower())
    if split is None:
        raise ManifestError(f"split {name!r} is not one of {sorted(SPLIT_ALIASES)}")
    return split


def file_stem(uri: str) -> str:
    """The file name without its suffix: ``s3://b/train/x_000001_000011.mp4`` -> ``x_000001_000011``."""
    name = uri.rsplit("/", 1)[-1]
    return name.rsplit(".", 1)[0] if "." in name else name


def finalise(df: pd.DataFrame, labels: list[str]) -> pd.DataFrame:
    """Manifest columns first, label ids from the label map (-1: unlabelled), stable order."""
    if df.empty:
        df = pd.DataFrame(columns=list(MANIFEST_COLUMNS))
    if "label_id" not in df.columns:
        ids = {name: i for i, name in enumerate(labels)}
        df["label_id"] = [ids.get(x, -1) for x in df["label"]]
    order = {"train": 0, "val": 1, "test": 2}
    df = df.assign(_order=df["split"].map(order)).sort_values(["_order", "uri"], kind="stable")
    extra = [c for c in df.columns if c not in MANIFEST_COLUMNS and c not in ("_order", "path", "list")]
    df = df[list(MANIFEST_COLUMNS) + extra].reset_index(drop=True)
    return df.astype({"label_id": "int64", "size": "int64", "uri": str, "label": str,
                      "split": str, "video_id": str})


# ------------------------------------------------------------------------------- reading/writing


def write_manifest(df: pd.DataFrame, labels: list[str], out_uri: str, *,
                   missing: Optional[list[str]] = None, outside_root: Optional[list[str]] = None,
                   endpoint_url: str = "") -> dict[str, str]:
    """Write the Parquet manifest, ``labels.json`` beside it and, if given, ``missing.txt`` and
    ``outside_root.txt`` (the rows refused for naming a file outside the dataset root; written
    only when there is one, so that a clean dataset's folder stays as it was).

    Returns ``{"manifest": uri, "labels": uri[, "missing": uri][, "outside_root": uri]}``.
    """
    if not out_uri.endswith(".parquet"):
        raise ValueError(f"manifest path {out_uri!r} must end with .parquet")
    absent = [c for c in MANIFEST_COLUMNS if c not in df.columns]
    if absent:
        raise ValueError(f"manifest lacks columns {absent}; needs {list(MANIFEST_COLUMNS)}")
    table = pa.Table.from_pandas(df, preserve_index=False)
    meta = {**(table.schema.metadata or {}), LABELS_KEY: json.dumps(labels).encode()}
    sink = io.BytesIO()
    pq.write_table(table.replace_schema_metadata(meta), sink)
    folder = out_uri.rsplit("/", 1)[0] if "/" in out_uri else "."
    written = {"manifest": out_uri, "labels": storage.join(folder, "labels.json")}
    storage.write_bytes(out_uri, sink.getvalue(), endpoint_url=endpoint_url)
    storage.write_bytes(written["labels"], json.dumps(labels, indent=1).encode(),
                        endpoint_url=endpoint_url)
    if missing is not None:
        written["missing"] = storage.join(folder, "missing.txt")
        storage.write_bytes(written["missing"], "".join(f"{m}\n" for m in missing).encode(),
                            endpoint_url=endpoint_url)
    if outside_root:
        written["outside_root"] = storage.join(folder, "outside_root.txt")
        storage.write_bytes(written["outside_root"], "".join(f"{m}\n" for m in outside_root).encode(),
                            endpoint_url=endpoint_url)
    return written


def read_manifest(uri: str, *, endpoint_url: str = "") -> tuple[pd.DataFrame, list[str]]:
    """``(manifest, labels)``; labels from the file's metadata, else ``labels.json`` beside it."""
    table = pq.read_table(io.BytesIO(storage.read_bytes(uri, endpoint_url=endpoint_url)))
    raw = (table.schema.metadata or {}).get(LABELS_KEY)
    if raw is not None:
        labels = json.loads(raw)
    else:
        folder = uri.rsplit("/", 1)[0] if "/" in uri else "."
        data = json.loads(storage.read_bytes(storage.join(folder, "labels.json"),
                                             endpoint_url=endpoint_url))
        labels = list(data) if isinstance(data, list) else [
            n for n, _ in sorted(data.items(), key=lambda kv: int(kv[1]))]
    df = table.to_pandas()
    absent = [c for c in MANIFEST_COLUMNS if c not in df.columns]
    if absent:
        raise ManifestError(f"{uri}: not a manifest: lacks columns {absent}")
    return df, labels
