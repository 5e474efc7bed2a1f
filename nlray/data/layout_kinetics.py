"""The official Kinetics layout: ``annotations/{train,validate,val,test}.csv`` and the videos below.

The CSVs have the header ``label,youtube_id,time_start,time_end,split[,is_cc]``; videos are named
``{youtube_id}_{time_start:06d}_{time_end:06d}.mp4`` (or ``{youtube_id}.mp4``) anywhere below the
root, usually ``train/``, ``val/``, ``test/``, flat or one folder per class. Annotated videos that do
not exist are left out and reported, never fatal.

The CSVs are untrusted: a video is only ever one of the root's own listed files, found by its
stem, and always below the root (checked again, normalised). A row whose ``youtube_id`` is a path
or URI rather than an id (``../../victim/evil``, ``/etc/hostname``, ``file:///etc/passwd``,
``s3://other-bucket/x``: a ``/``, ``\\`` or ``:``) is refused and reported (``outside_root``),
whatever ``allow_outside_root`` says: this layout names no file outside its root.

A layout module offers ``find(root, files)`` (its annotation files among the root's files; empty:
not this layout) and ``build(root, listing, found, endpoint_url, allow_outside_root=False) ->
(rows, labels, missing, outside_root)``.
"""
from __future__ import annotations

import io
from typing import Any, Optional

import pandas as pd

from nlray.data import storage
from nlray.data.manifest import ManifestError, file_stem

ANNOTATION_FILES = {"train": ("train.csv",), "val": ("validate.csv", "val.csv"), "test": ("test.csv",)}
_SPLIT_OF_FILE = {name: split for split, names in ANNOTATION_FILES.items() for name in names}


def video_id(youtube_id: str, time_start: Any, time_end: Any) -> str:
    """Kinetics' file stem: ``{youtube_id}_{time_start:06d}_{time_end:06d}``."""
    return f"{youtube_id}_{int(float(time_start)):06d}_{int(float(time_end)):06d}"


def find(root: str, files: list[str]) -> list[str]:
    """The annotation CSV of each split (the first of the accepted names that exists)."""
    found = []
    for names in ANNOTATION_FILES.values():
        for name in names:
            uri = storage.join(root, "annotations", name)
            if uri in files:
                found.append(uri)
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


def is_path_like(youtube_id: str) -> bool:
    """A ``youtube_id`` that names a path or URI (YouTube ids are ``[A-Za-z0-9_-]``, 11 long)."""
    return any(c in youtube_id for c in "/\\:\0") or youtube_id in (".", "..")


def build(root: str, listing: list[tuple[str, int]], found: list[str], endpoint_url: str,
          allow_outside_root: bool = False) -> tuple[pd.DataFrame, list[str], list[str], list[str]]:
    """(rows, labels, missing, outside_root) from the annotation CSVs ``found`` and the root's
    ``listing``; ``outside_root``: ``"<csv>: youtube_id <id>"`` of each refused row."""
    index: dict[str, list[tuple[str, int]]] = {}
    for uri, size in listing:
        if uri.lower().endswith(storage.VIDEO_SUFFIXES) and storage.is_below(uri, root):
            index.setdefault(file_stem(uri), []).append((uri, size))
    rows, missing, outside = [], [], []
    for uri in found:
        name = uri.rsplit("/", 1)[-1]
        split = _SPLIT_OF_FILE[name]
        for row in _read_annotations(uri, split, endpoint_url).itertuples(index=False):
            if is_path_like(row.youtube_id):
                outside.append(f"{name}: youtube_id {row.youtube_id}")
                continue
            hit = _find_video(index, root, row)
            if hit is None:
                missing.append(f"{row.split}/{row.label}/{row.video_id}.mp4".replace("//", "/"))
                continue
            rows.append({"uri": hit[0], "label": row.label, "split": row.split, "size": hit[1],
                         "video_id": row.video_id, "youtube_id": row.youtube_id,
                         "time_start": int(float(row.time_start)),
                         "time_end": int(float(row.time_end))})
    df = pd.DataFrame(rows)
    labels = sorted({x for x in df.get("label", pd.Series(dtype=str)) if x})
    return df, labels, missing, outside
