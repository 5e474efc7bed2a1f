"""From a dataset root to the manifest the trainer uses: ``build_manifest`` and ``resolve_dataset``.

A root is read with the first layout that finds its files there (``LAYOUTS``: the official
Kinetics CSVs, then ``path label`` lists), on S3 or locally; a list file can also be the root
itself. A new layout is a new module with ``find`` and ``build`` and a row of ``LAYOUTS``.
"""
from __future__ import annotations

import hashlib
import os
from typing import Any

import pandas as pd

from nlray.data import layout_kinetics, layout_lists, storage
from nlray.data.manifest import ManifestError, finalise, read_manifest, write_manifest
from nlray.data.synthetic import SPECS, ensure_demo_dataset

LAYOUTS = (layout_kinetics, layout_lists)  # tried in this order; the first that finds files wins


def build_manifest(root: str, *, endpoint_url: str = "") -> tuple[pd.DataFrame, list[str], list[str]]:
    """``(manifest, labels, missing)`` for a dataset root (official layout or list files) or a
    list file; ``missing`` names the annotated videos that do not exist (they are left out)."""
    storage.check_access(root, endpoint_url=endpoint_url)  # auth / missing bucket: fail now
    if layout_lists.is_list_file(root) and not storage.is_folder(root, endpoint_url=endpoint_url):
        df, labels, missing = layout_lists.build(root, [], [root], endpoint_url)
        return finalise(df, labels), labels, missing
    listing = storage.list_files(root, suffixes=None, endpoint_url=endpoint_url)
    files = [u for u, _ in listing]
    for layout in LAYOUTS:
        found = layout.find(root, files)
        if found:
            df, labels, missing = layout.build(root, listing, found, endpoint_url)
            return finalise(df, labels), labels, missing
    raise ManifestError(
        f"{root}: found neither annotations/{{train,validate,val,test}}.csv (official "
        f"Kinetics layout) nor list files ({{train,val,test}}.txt|csv, "
        f"*_{{train,val}}_list_videos.txt); {len(files)} files below it")


def resolve_dataset(data_cfg: Any, *, demo_spec: Any = None) -> tuple[pd.DataFrame, list[str]]:
    """The manifest the trainer uses, from ``data.root``:

    ``""`` -> the synthetic set ``data.synthetic`` (generated once into ``data.cache_dir``); a ``.parquet`` ->
    read it; a dataset root -> build its manifest once and cache it in ``data.cache_dir`` keyed by
    the root URI (delete the cache file to rebuild after the dataset changes). ``demo_spec``
    replaces ``SPECS[data.synthetic]`` for the synthetic set (tests use ``TINY_SPEC``). Which rows are trained
    on or validated is the dataset builders' choice (``nlray.data.pipeline``); this only checks that
    at least one of the configured splits is there.
    """
    root, endpoint = data_cfg.root, data_cfg.s3_endpoint_url
    cache_dir = os.path.expanduser(data_cfg.cache_dir)
    if root.endswith(".parquet"):
        df, labels = read_manifest(root, endpoint_url=endpoint)
    else:
        if not root:
            root = ensure_demo_dataset(cache_dir, demo_spec or SPECS[data_cfg.synthetic])
        key = hashlib.sha1(f"{root}|{storage.resolve_endpoint(endpoint) or ''}".encode()).hexdigest()
        cached = os.path.join(cache_dir, "manifests", key[:16], "manifest.parquet")
        if os.path.exists(cached):
            df, labels = read_manifest(cached)
        else:
            df, labels, missing = build_manifest(root, endpoint_url=endpoint)
            write_manifest(df, labels, cached, missing=missing)
    splits = sorted(set(df["split"]))
    if data_cfg.train_split not in splits and data_cfg.val_split not in splits:
        raise ManifestError(f"data.root={data_cfg.root!r}: splits {splits} contain neither "
                            f"data.train_split={data_cfg.train_split!r} nor "
                            f"data.val_split={data_cfg.val_split!r}")
    return df, labels
