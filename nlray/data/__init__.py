"""Kinetics-style video data: storage, manifests, synthetic data, transcoding, clips, the Ray Data pipeline.

Names are imported lazily (PEP 562) so that ``import nlray.data`` stays cheap on Ray workers and
does not pull in Ray, PyAV or decord until they are used:

    from nlray.data import read_bytes, MissingObjectError, resolve_dataset, TINY_SPEC

Storage / manifest / synthetic / transcode names are listed in ``_EXPORTS``. Any other public name
is looked up in the clip modules (``sampling``, ``decode``, ``transforms``, ``pipeline``), so their
public functions are reachable from here as soon as those modules define them.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "storage": ("StorageError", "MissingObjectError", "read_bytes", "write_bytes", "exists", "size",
                "list_files", "join", "check_access", "pyarrow_filesystem", "upload_tree",
                "delete", "resolve_endpoint", "is_s3", "local_path", "relative_to",
                "VIDEO_SUFFIXES"),
    "manifest": ("build_manifest", "write_manifest", "read_manifest", "resolve_dataset",
                 "read_list_file", "normalise_split", "MANIFEST_COLUMNS", "ManifestError"),
    "probe": ("probe_manifest", "probe_video", "mp4_structure", "ProbeFn", "PROBE_STATUSES"),
    "transcode": ("transcode_dataset", "transcode_video", "encode_h264", "output_size",
                  "copy_annotations", "TranscodeFn"),
    "synthetic": ("SyntheticSpec", "DEMO_SPEC", "TINY_SPEC", "CLASSES", "make_dataset",
                  "ensure_demo_dataset", "plan_videos", "render_video"),
}
# Helper C's modules: every public name they define is exported on first access.
_CLIP_MODULES = ("sampling", "decode", "transforms", "pipeline")
_NAME_TO_MODULE = {name: mod for mod, names in _EXPORTS.items() for name in names}

__all__ = sorted(_NAME_TO_MODULE)


def __getattr__(name: str) -> Any:
    module = _NAME_TO_MODULE.get(name)
    if module is not None:
        value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
        globals()[name] = value  # cache: later lookups skip __getattr__
        return value
    if not name.startswith("_"):
        for module in _CLIP_MODULES:
            try:
                mod = importlib.import_module(f"{__name__}.{module}")
            except ModuleNotFoundError as exc:
                if exc.name != f"{__name__}.{module}":
                    raise  # a real missing dependency inside the module, not an absent module
                continue
            if name in getattr(mod, "__all__", ()) or (not hasattr(mod, "__all__")
                                                       and hasattr(mod, name)):
                value = getattr(mod, name)
                globals()[name] = value
                return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
