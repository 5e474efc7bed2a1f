"""The manifest: one Parquet row per video (uri, label, label_id, split, size, video_id, ...).

Built from either layout, on S3 or locally:

* official Kinetics: ``annotations/{train,validate,val,test}.csv`` with the header
  ``label,youtube_id,time_start,time_end,split[,is_cc]`` and videos named
  ``{youtube_id}_{time_start:06d}_{time_end:06d}.mp4`` (or ``{youtube_id}.mp4``) anywhere below the
  root, usually ``train/``, ``val/``, ``test/``, flat or one folder per class;
* a plain list (PySlowFast / mmaction2): ``relative/path.mp4 label`` per line, the label an
  integer id or a class name; either the list file itself is the root, or the root folder holds
  ``{train,val,test}.{txt,csv}`` / ``*_{train,val,test}_list_videos.txt``.

The label map is the sorted class names (index = label_id); it is stored in the Parquet file's
metadata and as ``labels.json`` beside it. Annotated videos that do not exist are left out and
reported, never fatal.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import re
from typing import Any, Optional

import pandas as pd

from nlray.data import storage

MANIFEST_COLUMNS = ("uri", "label", "label_id", "split", "size", "video_id")
ANNOTATION_FILES = {"train": ("train.csv",), "val": ("validate.csv", "val.csv"), "test": ("test.csv",)}
SPLIT_ALIASES = {"train": "train", "training": "train", "validate": "val", "validation": "val",
                 "val": "val", "test": "test", "testing": "test"}
LIST_SUFFIXES = (".txt", ".csv", ".lst", ".list")
LABELS_KEY = b"nlray.labels"  # Parquet schema metadata holding the JSON label list
LIST_PATTERN = re.compile(r"(?:^|[_\-.])(train|training|val|validate|validation|test|testing)"
                          r"(?:[_\-.]|$)", re.IGNORECASE)


class ManifestError(ValueError):
    """A dataset root or annotation file that cannot be turned into a manifest."""


def normalise_split(name: str) -> str:
    """``validate`` / ``validation`` -> ``val``; train / val / test pass through."""
    split = SPLIT_ALIASES.get(str(name).strip().lower())
    if split is None:
        raise ManifestError(f"split {name!r} is not one of {sorted(SPLIT_ALIASES)}")
    return split


def video_id(youtube_id: str, time_start: Any, time_end: Any) -> str:
    """Kinetics' file stem: ``{youtube_id}_{time_start:06d}_{time_end:06d}``."""
    return f"{youtube_id}_{int(float(time_start)):06d}_{int(float(time_end)):06d}"


def _stem(uri: str) -> str:
    name = uri.rsplit("/", 1)[-1]
    return name.rsplit(".", 1)[0] if "." in name else name


# ---------------------------------------------------------------------------- official layout


def _annotation_uris(root: str, files: list[str]) -> dict[str, str]:
    """split -> annotation CSV URI (the first of the accepted names that exists)."""
    found = {}
    for split, names in ANNOTATION_FILES.items():
        for name in names:
            uri = storage.join(root, "annotations", name)
            if uri in files:
                found[split] = uri
                break
    return found


def _read_annotations(uri: str, split: str, endpoint_url: str) -> pd.DataFrame:
    data = storage.read_bytes(uri, endpoint_url=endpoint_url)
    # Strings everywhere: YouTube ids like "0001" or "NaN" must stay as written.
    df = pd.read_csv(io.BytesIO(data), dtype=str, keep_default_na=False, skipinitialspace=True)
    df.columns = [c.strip() for c in df.columns]
    needed = {"youtube_id", "time_start", "time_end"}
    if not needed <= set(df.columns):
        raise ManifestError(f"{uri}: columns {list(df.columns)} lack {sorted(needed - set(df.columns))}"
                            "; expected label,youtube_id,time_start,time_end,split[,is_cc]")
    if "label" not in df.columns:  # Kinetics test sets were published without labels
        df["label"] = ""
    bad = [v for v in df["time_start"].tolist() + df["time_end"].tolist() if not _is_number(v)]
    if bad:
        raise ManifestError(f"{uri}: time_start/time_end must be numbers; got {bad[0]!r}")
    df["split"] = split
    df["video_id"] = [video_id(y, s, e) for y, s, e in
                      zip(df["youtube_id"], df["time_start"], df["time_end"])]
    return df.drop_duplicates("video_id")[["label", "youtube_id", "time_start", "time_end",
                                           "split", "video_id"]]


def _is_number(value: str) -> bool:
    try:
        float(value)
        return True
    except ValueError:
        return False


def _find_video(index: dict[str, list[tuple[str, int]]], root: str, row: Any) -> Optional[tuple]:
    """The (uri, size) of an annotated video; prefers one under the split's own folder."""
    candidates = index.get(row.video_id) or index.get(row.youtube_id) or []
    if len(candidates) > 1:
        folder = storage.join(root, row.split) + "/"
        preferred = [c for c in candidates if c[0].startswith(folder)]
        candidates = preferred or candidates
    return candidates[0] if candidates else None


def _build_official(root: str, files: list[tuple[str, int]], annotations: dict[str, str],
                    endpoint_url: str) -> tuple[pd.DataFrame, list[str]]:
    index: dict[str, list[tuple[str, int]]] = {}
    for uri, size in files:
        if uri.lower().endswith(storage.VIDEO_SUFFIXES):
            index.setdefault(_stem(uri), []).append((uri, size))
    rows, missing = [], []
    for split, uri in annotations.items():
        for row in _read_annotations(uri, split, endpoint_url).itertuples(index=False):
            hit = _find_video(index, root, row)
            if hit is None:
                missing.append(f"{row.split}/{row.label}/{row.video_id}.mp4".replace("//", "/"))
                continue
            rows.append({"uri": hit[0], "label": row.label, "split": row.split, "size": hit[1],
                         "video_id": row.video_id, "youtube_id": row.youtube_id,
                         "time_start": int(float(row.time_start)),
                         "time_end": int(float(row.time_end))})
    return pd.DataFrame(rows), missing


# ---------------------------------------------------------------------------------- list files

_LINE = re.compile(r"^(?P<path>.*?\.(?:mp4|webm|mkv|avi|mov|m4v))[\s,]+(?P<label>\S.*?)\s*$",
                   re.IGNORECASE)


def read_list_file(uri: str, *, endpoint_url: str = "") -> pd.DataFrame:
    """``path label`` lines (PySlowFast / mmaction2) -> DataFrame(path, label) of strings."""
    text = storage.read_bytes(uri, endpoint_url=endpoint_url).decode("utf-8-sig")
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = _LINE.match(line)
        parts = (match.group("path"), match.group("label")) if match else tuple(line.rsplit(None, 1))
        if len(parts) != 2:
            raise ManifestError(f"{uri}:{number}: {line!r} is not 'relative/path.mp4 label'")
        rows.append(parts)
    if not rows:
        raise ManifestError(f"{uri}: no 'path label' lines")
    return pd.DataFrame(rows, columns=["path", "label"])


def _split_of_list(uri: str) -> str:
    match = LIST_PATTERN.search(_stem(uri))
    return normalise_split(match.group(1)) if match else "train"


def _names_beside(list_uri: str, endpoint_url: str) -> Optional[list[str]]:
    """Class names for integer labels, from ``labels.json`` / ``classids.json`` beside the list."""
    folder = list_uri.rsplit("/", 1)[0]
    for name in ("labels.json", "classids.json"):
        uri = storage.join(folder, name)
        if storage.exists(uri, endpoint_url=endpoint_url):
            data = json.loads(storage.read_bytes(uri, endpoint_url=endpoint_url))
            if isinstance(data, dict):  # {name: id}, as PySlowFast's classids.json
                return [n for n, _ in sorted(data.items(), key=lambda kv: int(kv[1]))]
            return [str(n) for n in data]
    return None


def _build_lists(list_uris: list[str], endpoint_url: str) -> tuple[pd.DataFrame, list[str]]:
    frames = []
    for uri in list_uris:
        df = read_list_file(uri, endpoint_url=endpoint_url)
        folder = uri.rsplit("/", 1)[0]
        df["uri"] = [p if "://" in p or p.startswith("/") else storage.join(folder, p)
                     for p in df["path"]]
        df["split"] = _split_of_list(uri)
        df["list"] = uri
        frames.append(df)
    df = pd.concat(frames, ignore_index=True).drop_duplicates(["uri", "split"])
    sizes: dict[str, int] = {}
    for folder in sorted({u.rsplit("/", 1)[0] for u in list_uris}):
        sizes.update(storage.list_files(folder, suffixes=None, endpoint_url=endpoint_url))
    for uri in sorted(set(df["uri"]) - set(sizes)):  # outside the list's folder: one by one
        try:
            sizes[uri] = storage.size(uri, endpoint_url=endpoint_url)
        except storage.MissingObjectError:
            pass
    present = df["uri"].isin(sizes)
    missing = [f"{s}/{p}" for s, p in zip(df.loc[~present, "split"], df.loc[~present, "path"])]
    df = df[present].copy()
    df["size"] = df["uri"].map(sizes)
    df["video_id"] = [_stem(u) for u in df["uri"]]
    return df, missing


def _list_labels(df: pd.DataFrame, list_uris: list[str], endpoint_url: str) -> list[str]:
    """Label map for list files: integer ids (names from a file beside, if any) or class names."""
    numeric = df["label"].str.fullmatch(r"\d+")
    if numeric.all() and len(df):
        ids = df["label"].astype(int)
        names = _names_beside(list_uris[0], endpoint_url)
        if names is not None and ids.max() >= len(names):
            raise ManifestError(f"label id {ids.max()} >= {len(names)} names in the label file "
                                f"beside {list_uris[0]}")
        names = names or [str(i) for i in range(int(ids.max()) + 1)]
        df["label_id"] = ids
        df["label"] = [names[i] for i in ids]
        return names
    if numeric.any():
        raise ManifestError(f"{list_uris}: labels mix integer ids and class names "
                            f"(e.g. {df['label'][numeric].iloc[0]!r} and "
                            f"{df['label'][~numeric].iloc[0]!r})")
    return sorted(set(df["label"]))


# ------------------------------------------------------------------------------------ building


def _list_files_in(root: str, files: list[str]) -> list[str]:
    """Top-level list files of a root without ``annotations/`` (train.txt, *_val_list_videos.txt)."""
    top = [u for u in files if "/" not in storage.relative_to(u, root)]
    return [u for u in top if u.lower().endswith(LIST_SUFFIXES) and LIST_PATTERN.search(_stem(u))]


def build_manifest(root: str, *, endpoint_url: str = "") -> tuple[pd.DataFrame, list[str], list[str]]:
    """``(manifest, labels, missing)`` for a dataset root (official layout or list files) or a
    list file; ``missing`` names the annotated videos that do not exist (they are left out)."""
    storage.check_access(root, endpoint_url=endpoint_url)  # auth / missing bucket: fail now
    if root.lower().endswith(LIST_SUFFIXES) and not _is_folder(root, endpoint_url):
        lists = [root]
        files: list[str] = []
    else:
        listing = storage.list_files(root, suffixes=None, endpoint_url=endpoint_url)
        files = [u for u, _ in listing]
        annotations = _annotation_uris(root, files)
        if annotations:
            df, missing = _build_official(root, listing, annotations, endpoint_url)
            labels = sorted({x for x in df.get("label", pd.Series(dtype=str)) if x})
            return _finalise(df, labels), labels, missing
        lists = _list_files_in(root, files)
        if not lists:
            raise ManifestError(
                f"{root}: found neither annotations/{{train,validate,val,test}}.csv (official "
                f"Kinetics layout) nor list files ({{train,val,test}}.txt|csv, "
                f"*_{{train,val}}_list_videos.txt); {len(files)} files below it")
    df, missing = _build_lists(lists, endpoint_url)
    labels = _list_labels(df, lists, endpoint_url)
    return _finalise(df, labels), labels, missing


def _is_folder(uri: str, endpoint_url: str) -> bool:
    if storage.is_s3(uri):
        return not storage.exists(uri, endpoint_url=endpoint_url)
    return os.path.isdir(storage.local_path(uri))


def _finalise(df: pd.DataFrame, labels: list[str]) -> pd.DataFrame:
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
                   missing: Optional[list[str]] = None, endpoint_url: str = "") -> dict[str, str]:
    """Write the Parquet manifest, ``labels.json`` beside it and, if given, ``missing.txt``.

    Returns ``{"manifest": uri, "labels": uri[, "missing": uri]}``.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

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
    return written


def read_manifest(uri: str, *, endpoint_url: str = "") -> tuple[pd.DataFrame, list[str]]:
    """``(manifest, labels)``; labels from the file's metadata, else ``labels.json`` beside it."""
    import pyarrow.parquet as pq

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


def resolve_dataset(data_cfg: Any, *, demo_spec: Any = None) -> tuple[pd.DataFrame, list[str]]:
    """The manifest the trainer uses, from ``data.root``:

    ``""`` -> the synthetic demo set (generated once into ``data.cache_dir``); a ``.parquet`` ->
    read it; a dataset root -> build its manifest once and cache it in ``data.cache_dir`` keyed by
    the root URI (delete the cache file to rebuild after the dataset changes). ``demo_spec``
    replaces ``DEMO_SPEC`` for the synthetic set (tests use ``TINY_SPEC``).
    """
    from nlray.data.synthetic import DEMO_SPEC, ensure_demo_dataset

    root, endpoint = data_cfg.root, data_cfg.s3_endpoint_url
    cache_dir = os.path.expanduser(data_cfg.cache_dir)
    if root.endswith(".parquet"):
        df, labels = read_manifest(root, endpoint_url=endpoint)
    else:
        if not root:
            root = ensure_demo_dataset(cache_dir, demo_spec or DEMO_SPEC)
        key = hashlib.sha1(f"{root}|{storage.resolve_endpoint(endpoint) or ''}".encode()).hexdigest()
        cached = os.path.join(cache_dir, "manifests", key[:16], "manifest.parquet")
        if os.path.exists(cached):
            df, labels = read_manifest(cached)
        else:
            df, labels, missing = build_manifest(root, endpoint_url=endpoint)
            write_manifest(df, labels, cached, missing=missing)
    splits = sorted(set(df["split"]))
    wanted = [s for s in (data_cfg.train_split, data_cfg.val_split) if s in splits]
    if not wanted:
        raise ManifestError(f"data.root={data_cfg.root!r}: splits {splits} contain neither "
                            f"data.train_split={data_cfg.train_split!r} nor "
                            f"data.val_split={data_cfg.val_split!r}")
    return df, labels
