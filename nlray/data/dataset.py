"""From a dataset root to the manifest the trainer uses: ``build_manifest`` and ``resolve_dataset``.

A root is read with the first layout that finds its files there (``LAYOUTS``: the official
Kinetics CSVs, then ``path label`` lists), on S3 or locally; a list file can also be the root
itself. A new layout is a new module with ``find`` and ``build`` and a row of ``LAYOUTS``.

Dataset files are untrusted: a row naming a video outside the root is refused (not in the
manifest, never read) and reported as ``outside_root`` unless ``allow_outside_root``
(``data.allow_outside_root``): a log line with the count and a few examples, ``outside_root.txt``
beside the manifest, and the count in prepare_kinetics' summary.
"""
from __future__ import annotations

import hashlib
import logging
import os
from typing import Any, NamedTuple

import pandas as pd

from nlray.data import layout_kinetics, layout_lists, storage
from nlray.data.manifest import ManifestError, finalise, read_manifest, write_manifest
from nlray.data.synthetic import ensure_demo_dataset
from nlray.data.synthetic_spec import SPECS
from nlray.secrets import redact

LAYOUTS = (layout_kinetics, layout_lists)  # tried in this order; the first that finds files wins
OUTSIDE_ROOT_EXAMPLES = 3  # refused rows named in the log line
log = logging.getLogger("nlray")


class DatasetScan(NamedTuple):
    """What ``scan_dataset`` found: the manifest, the label map, the annotated videos that do not
    exist (``missing``) and the rows refused for naming a file outside the root (``outside_root``)."""

    manifest: pd.DataFrame
    labels: list[str]
    missing: list[str]
    outside_root: list[str]


def build_manifest(root: str, *, endpoint_url: str = "",
                   allow_outside_root: bool = False) -> tuple[pd.DataFrame, list[str], list[str]]:
    """``(manifest, labels, missing)`` for a dataset root (official layout or list files) or a
    list file; ``missing`` names the annotated videos that do not exist (they are left out).
    Rows outside the root are left out and logged (``scan_dataset`` returns them too)."""
    scan = scan_dataset(root, endpoint_url=endpoint_url, allow_outside_root=allow_outside_root)
    return scan.manifest, scan.labels, scan.missing


def scan_dataset(root: str, *, endpoint_url: str = "", allow_outside_root: bool = False) -> DatasetScan:
    """``build_manifest`` with the refused rows: ``DatasetScan(manifest, labels, missing, outside_root)``.

    A row of a list file or annotation naming a video outside ``root`` (``..``, an absolute path or
    URI elsewhere, another bucket or scheme) is not in the manifest and is never read: it is listed
    in ``outside_root`` as ``"<file>: <row as written>"`` and logged (count and examples), unless
    ``allow_outside_root``."""
    storage.check_access(root, endpoint_url=endpoint_url)  # auth / missing bucket: fail now
    if layout_lists.is_list_file(root) and not storage.is_folder(root, endpoint_url=endpoint_url):
        # not listed yet: the list's folder is listed once, there (layout_lists.build)
        df, labels, missing, outside = layout_lists.build(root, None, [root], endpoint_url, allow_outside_root)
        return _scanned(root, finalise(df, labels), labels, missing, outside)
    # the one listing of the root: each layout finds its files and which videos exist in it (no request per video)
    listing = storage.list_files(root, suffixes=None, endpoint_url=endpoint_url)
    files = [u for u, _ in listing]
    for layout in LAYOUTS:
        found = layout.find(root, files)
        if found:
            df, labels, missing, outside = layout.build(root, listing, found, endpoint_url, allow_outside_root)
            return _scanned(root, finalise(df, labels), labels, missing, outside)
    raise ManifestError(
        f"{root}: found neither annotations/{{train,validate,val,test}}.csv (official "
        f"Kinetics layout) nor list files ({{train,val,test}}.txt|csv, "
        f"*_{{train,val}}_list_videos.txt); {len(files)} files below it")


def _scanned(root: str, df: pd.DataFrame, labels: list[str], missing: list[str],
             outside: list[str]) -> DatasetScan:
    if outside:
        log.warning("%s", outside_root_line(root, outside))
    return DatasetScan(df, labels, missing, outside)


def outside_root_line(root: str, outside: list[str]) -> str:
    """One line: how many rows were refused for naming a file outside ``root``, a few examples."""
    examples = "; ".join(repr(x) for x in outside[:OUTSIDE_ROOT_EXAMPLES])
    more = f" and {len(outside) - OUTSIDE_ROOT_EXAMPLES} more" if len(outside) > OUTSIDE_ROOT_EXAMPLES else ""
    return (f"{redact(root)}: {len(outside)} row(s) refused (outside_root): they name a file outside "
            f"the dataset root, e.g. {redact(examples)}{more}; set data.allow_outside_root=true "
            "(prepare_kinetics: --allow-outside-root) to read them")


def resolve_dataset(data_cfg: Any, *, demo_spec: Any = None) -> tuple[pd.DataFrame, list[str]]:
    """The manifest the trainer uses, from ``data.root``:

    ``""`` -> the synthetic set ``data.synthetic`` (generated once into ``data.cache_dir``); a ``.parquet`` ->
    read it; a dataset root -> build its manifest once and cache it in ``data.cache_dir`` keyed by
    the root URI (delete the cache file to rebuild after the dataset changes), rows outside the root
    refused unless ``data.allow_outside_root`` (logged; ``outside_root.txt`` beside the cached manifest). ``demo_spec``
    replaces ``SPECS[data.synthetic]`` for the synthetic set (tests use ``TINY_SPEC``). Which rows are trained
    on or validated is the dataset builders' choice (``nlray.data.pipeline``); this only checks that
    at least one of the configured splits is there.
    """
    root, endpoint = data_cfg.root, data_cfg.s3_endpoint_url
    allow_outside = bool(getattr(data_cfg, "allow_outside_root", False))  # a bare namespace: the default
    cache_dir = os.path.expanduser(data_cfg.cache_dir)
    if root.endswith(".parquet"):
        df, labels = read_manifest(root, endpoint_url=endpoint)
    else:
        if not root:
            root = ensure_demo_dataset(cache_dir, demo_spec or SPECS[data_cfg.synthetic])
        # allow_outside_root changes which rows are in: its own cache entry (the default keeps the old key)
        outside = "|allow_outside_root" if allow_outside else ""
        key = hashlib.sha1(f"{root}|{storage.resolve_endpoint(endpoint) or ''}{outside}".encode()).hexdigest()
        cached = os.path.join(cache_dir, "manifests", key[:16], "manifest.parquet")
        if os.path.exists(cached):
            df, labels = read_manifest(cached)
        else:
            df, labels, missing, outside = scan_dataset(
                root, endpoint_url=endpoint, allow_outside_root=allow_outside)
            write_manifest(df, labels, cached, missing=missing, outside_root=outside)
    splits = sorted(set(df["split"]))
    if data_cfg.train_split not in splits and data_cfg.val_split not in splits:
        raise ManifestError(f"data.root={data_cfg.root!r}: splits {splits} contain neither "
                            f"data.train_split={data_cfg.train_split!r} nor "
                            f"data.val_split={data_cfg.val_split!r}")
    return df, labels
