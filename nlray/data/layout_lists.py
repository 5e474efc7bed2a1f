"""The plain list layout (PySlowFast / mmaction2): ``relative/path.mp4 label`` per line.

The label is an integer id or a class name. Either the list file itself is the root, or the root
folder holds ``{train,val,test}.{txt,csv}`` / ``*_{train,val,test}_list_videos.txt``; the split
comes from the list's name. Integer ids take their names from ``labels.json`` / ``classids.json``
beside the list, if there is one. Listed videos that do not exist are left out and reported.

A list is untrusted: a row must name a video below the list's own folder (the dataset root). A
row that leaves it (``../x.mp4``, an absolute path or ``file://`` URI elsewhere, ``/dev/zero``,
another bucket or scheme) is refused and reported (``outside_root``), never checked for existence
nor read, unless ``allow_outside_root``. Paths are compared after normalising (``a/../x``), whole
segments at a time; symlinks inside the root are the dataset owner's and are not resolved.

Same interface as every layout module: ``find(root, files)`` and ``build(root, listing, found,
endpoint_url, allow_outside_root=False) -> (rows, labels, missing, outside_root)``.
"""
from __future__ import annotations

import json
import posixpath
import re
from typing import Optional

import pandas as pd

from nlray.data import storage
from nlray.data.manifest import ManifestError, file_stem, normalise_split

LIST_SUFFIXES = (".txt", ".csv", ".lst", ".list")
LIST_PATTERN = re.compile(r"(?:^|[_\-.])(train|training|val|validate|validation|test|testing)"
                          r"(?:[_\-.]|$)", re.IGNORECASE)
_LINE = re.compile(r"^(?P<path>.*?\.(?:mp4|webm|mkv|avi|mov|m4v))[\s,]+(?P<label>\S.*?)\s*$",
                   re.IGNORECASE)


def is_list_file(uri: str) -> bool:
    """Named like a list file (the caller still checks that it is not a folder)."""
    return uri.lower().endswith(LIST_SUFFIXES)


def find(root: str, files: list[str]) -> list[str]:
    """Top-level list files of a root (train.txt, *_val_list_videos.txt)."""
    top = [u for u in files if "/" not in storage.relative_to(u, root)]
    return [u for u in top if is_list_file(u) and LIST_PATTERN.search(file_stem(u))]


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
    match = LIST_PATTERN.search(file_stem(uri))
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


def resolve_row(path: str, folder: str, *, allow_outside_root: bool = False) -> Optional[str]:
    """The URI a list row names, relative to the list's ``folder``; None when it is outside that
    folder (after normalising) and ``allow_outside_root`` is false, or not a URI nlray reads."""
    if "://" in path or path.startswith("/"):  # absolute: a path or URI of its own
        try:
            uri = storage.normalise(path)
        except ValueError:
            return None  # an unsupported scheme (gs://, http://): never readable
        return uri if allow_outside_root or storage.is_below(uri, folder) else None
    rel = posixpath.normpath(path)
    if rel == ".." or rel.startswith("../"):
        return storage.normalise(storage.join(folder, path)) if allow_outside_root else None
    return storage.join(folder, rel)


def _read_lists(list_uris: list[str], endpoint_url: str,
                allow_outside_root: bool = False) -> tuple[pd.DataFrame, list[str], list[str]]:
    frames, outside = [], []
    for uri in list_uris:
        df = read_list_file(uri, endpoint_url=endpoint_url)
        folder = uri.rsplit("/", 1)[0]
        df["uri"] = [resolve_row(p, folder, allow_outside_root=allow_outside_root) for p in df["path"]]
        df["split"] = _split_of_list(uri)
        df["list"] = uri
        refused = df["uri"].isna()
        name = uri.rsplit("/", 1)[-1]
        outside += [f"{name}: {p}" for p in df.loc[refused, "path"]]
        frames.append(df[~refused])
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
    df["video_id"] = [file_stem(u) for u in df["uri"]]
    return df, missing, outside


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


def build(root: str, listing: list[tuple[str, int]], found: list[str], endpoint_url: str,
          allow_outside_root: bool = False) -> tuple[pd.DataFrame, list[str], list[str], list[str]]:
    """(rows, labels, missing, outside_root) of the list files ``found`` (``root`` and ``listing``
    are not needed: each list names its videos relative to its own folder, which holds them).
    ``outside_root``: ``"<list file>: <path as written>"`` of each refused row."""
    df, missing, outside = _read_lists(found, endpoint_url, allow_outside_root)
    labels = _list_labels(df, found, endpoint_url)
    return df, labels, missing, outside
