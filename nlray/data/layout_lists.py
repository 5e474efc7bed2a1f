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

Which listed videos exist comes from one listing: the root's, which the caller already made to find the
lists (``listing``), or, when the root is a list file itself, one listing of the list's folder. A row
below a listed folder that the listing lacks is missing: no request is made per video (a Kinetics-sized
list with 5% missing would otherwise send ~13,000 sequential HEADs). Only rows outside the lists' folders
(``allow_outside_root``) are looked up one by one. The listing leaves out hidden files and folders
(``.name``, temp files of atomic writes) and anything not a regular file: a row naming one is missing.

Same interface as every layout module: ``find(root, files)`` and ``build(root, listing, found,
endpoint_url, allow_outside_root=False) -> (rows, labels, missing, outside_root)``.
"""
from __future__ import annotations

import json
import posixpath
import re
from typing import Iterable, Optional

import pandas as pd

from nlray.data import storage
from nlray.data.manifest import ManifestError, file_stem, normalise_split
from nlray.uris import parse_uri

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


def _names_beside(list_uri: str, endpoint_url: str, listed: Optional["_Listed"] = None) -> Optional[list[str]]:
    """Class names for integer labels, from ``labels.json`` / ``classids.json`` beside the list
    (looked up in ``listed`` when it covers the list's folder: no request)."""
    folder = list_uri.rsplit("/", 1)[0]
    for name in ("labels.json", "classids.json"):
        uri = storage.join(folder, name)
        covered, size = listed.lookup(uri) if listed is not None else (False, None)
        if size is not None or (not covered and storage.exists(uri, endpoint_url=endpoint_url)):
            data = json.loads(storage.read_bytes(uri, endpoint_url=endpoint_url))
            if isinstance(data, dict):  # {name: id}, as PySlowFast's classids.json
                return [n for n, _ in sorted(data.items(), key=lambda kv: int(kv[1]))]
            return [str(n) for n in data]
    return None


def _path(uri: str) -> str:
    """The normalised path of ``uri`` inside its scheme and bucket (``/a/b.mp4``)."""
    return posixpath.normpath("/" + parse_uri(uri)[2].lstrip("/"))


class _Listed:
    """The files of the listed ``folders``: ``lookup(uri)`` says whether ``uri`` is below one of them
    (then the listing is the whole truth: absent means missing) and its size if listed."""

    def __init__(self, folders: Iterable[str], listing: Iterable[tuple[str, int]]):
        self.folders = list(folders)
        self.sizes = dict(listing)

    def lookup(self, uri: str) -> tuple[bool, Optional[int]]:
        """``(covered, size or None)``; one dict lookup for a row in the listing's own form."""
        n = self.sizes.get(uri)
        if n is not None:
            return True, n
        for folder in self.folders:
            if storage.is_below(uri, folder):  # same file in another form (plain path / file://, a/../b)?
                rel = posixpath.relpath(_path(uri), _path(folder))
                return True, self.sizes.get(storage.join(folder, rel))
        return False, None


def _listed(root: str, listing: Optional[list[tuple[str, int]]], list_uris: list[str],
            endpoint_url: str) -> _Listed:
    """The lists' folders and their files: from ``listing`` (of ``root``) for the folders at or below
    ``root``; any other folder listed here, once."""
    folders = sorted({u.rsplit("/", 1)[0] for u in list_uris})
    covered = [] if listing is None else [root]
    files = list(listing or [])
    for folder in folders:
        if not any(folder.rstrip("/") == c.rstrip("/") or storage.is_below(folder, c) for c in covered):
            files += storage.list_files(folder, suffixes=None, endpoint_url=endpoint_url)
            covered.append(folder)
    return _Listed(covered, files)


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


def _read_lists(list_uris: list[str], endpoint_url: str, allow_outside_root: bool = False,
                listed: Optional[_Listed] = None) -> tuple[pd.DataFrame, list[str], list[str]]:
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
    listed = listed if listed is not None else _listed("", None, list_uris, endpoint_url)
    sizes: dict[str, int] = {}
    for uri in set(df["uri"]):
        covered, n = listed.lookup(uri)
        if n is not None:
            sizes[uri] = n
        elif not covered:  # outside the lists' folders (allow_outside_root): one by one
            try:
                sizes[uri] = storage.size(uri, endpoint_url=endpoint_url)
            except storage.MissingObjectError:
                pass
        # else: below a listed folder and not in its listing: missing, no request
    present = df["uri"].isin(sizes)
    missing = [f"{s}/{p}" for s, p in zip(df.loc[~present, "split"], df.loc[~present, "path"])]
    df = df[present].copy()
    df["size"] = df["uri"].map(sizes)
    df["video_id"] = [file_stem(u) for u in df["uri"]]
    return df, missing, outside


def _list_labels(df: pd.DataFrame, list_uris: list[str], endpoint_url: str,
                 listed: Optional[_Listed] = None) -> list[str]:
    """Label map for list files: integer ids (names from a file beside, if any) or class names."""
    numeric = df["label"].str.fullmatch(r"\d+")
    if numeric.all() and len(df):
        ids = df["label"].astype(int)
        names = _names_beside(list_uris[0], endpoint_url, listed)
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


def build(root: str, listing: Optional[list[tuple[str, int]]], found: list[str], endpoint_url: str,
          allow_outside_root: bool = False) -> tuple[pd.DataFrame, list[str], list[str], list[str]]:
    """(rows, labels, missing, outside_root) of the list files ``found``; ``outside_root``:
    ``"<list file>: <path as written>"`` of each refused row.

    ``listing``: ``storage.list_files(root, suffixes=None)``, already made by the caller, which tells
    which listed videos exist below ``root``; None when ``root`` is a list file (not listed yet): its
    folder is listed here, once. Each list names its videos relative to its own folder."""
    listed = _listed(root, listing, found, endpoint_url)
    df, missing, outside = _read_lists(found, endpoint_url, allow_outside_root, listed)
    labels = _list_labels(df, found, endpoint_url, listed)
    return df, labels, missing, outside
