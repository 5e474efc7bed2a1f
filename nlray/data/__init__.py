"""Kinetics-style video data: storage, manifests, synthetic data, transcoding, clips, the Ray Data pipeline.

    from nlray.data import read_bytes, MissingObjectError, resolve_dataset, TINY_SPEC

Modules, one job each:

- ``storage``: bytes at a URI (``s3://``, ``file://``, a path); one backend per scheme (local, s3).
- ``manifest``: the manifest's columns and splits, Parquet reading/writing.
- ``layout_kinetics``, ``layout_lists``: one dataset layout each (official CSVs; ``path label`` lists).
- ``dataset``: a dataset root -> its manifest (``build_manifest``); ``resolve_dataset`` for the trainer.
- ``synthetic``: the synthetic Kinetics-like dataset; ``transcode``: re-encoding for fast decoding.
- ``badvideo``: why a video is bad (``nlray.choices.BAD_VIDEO_REASONS``); ``probe``: check them all.
- ``sampling``: which frames a clip takes; ``transforms``: crop geometry, scaling, crops, flips.
- ``decode``: open a video and read chosen frames, over ``decode_pyav`` / ``decode_decord``.
- ``clips``, ``manifest_rows``, ``pipeline``: the Ray Data pipeline (not imported here: it needs
  ``ray.data``; import it as ``nlray.data.pipeline``).
"""
from __future__ import annotations

from nlray.data.badvideo import BadVideo, container_truncated, mp4_structure
from nlray.data.dataset import build_manifest, resolve_dataset
from nlray.data.decode import fetch_video, open_video, read_frames, read_unique
from nlray.data.layout_lists import read_list_file
from nlray.data.manifest import (MANIFEST_COLUMNS, ManifestError, normalise_split, read_manifest,
                                 write_manifest)
from nlray.data.probe import PROBE_STATUSES, ProbeFn, probe_manifest, probe_video
from nlray.data.sampling import eval_indices, train_indices, window_size
from nlray.data.storage import (VIDEO_SUFFIXES, MissingObjectError, StorageError, check_access, delete,
                                exists, is_s3, join, list_files, local_path, pyarrow_filesystem,
                                read_bytes, relative_to, resolve_endpoint, size, upload_tree, write_bytes)
from nlray.data.synthetic import ensure_demo_dataset, make_dataset
from nlray.data.synthetic_render import render_video
from nlray.data.synthetic_spec import CLASSES, DEMO_SPEC, TINY_SPEC, SyntheticSpec, plan_videos
from nlray.data.transcode import (TranscodeFn, copy_annotations, encode_h264, output_size,
                                  transcode_dataset, transcode_video)
from nlray.data.transforms import Crop, CropError, crop_corners, normalize_on_device, spatial_crops

__all__ = [
    "StorageError", "MissingObjectError", "read_bytes", "write_bytes", "exists", "size", "list_files",
    "join", "check_access", "pyarrow_filesystem", "upload_tree", "delete", "resolve_endpoint", "is_s3",
    "local_path", "relative_to", "VIDEO_SUFFIXES",
    "build_manifest", "write_manifest", "read_manifest", "resolve_dataset", "read_list_file",
    "normalise_split", "MANIFEST_COLUMNS", "ManifestError",
    "probe_manifest", "probe_video", "mp4_structure", "ProbeFn", "PROBE_STATUSES",
    "transcode_dataset", "transcode_video", "encode_h264", "output_size", "copy_annotations", "TranscodeFn",
    "SyntheticSpec", "DEMO_SPEC", "TINY_SPEC", "CLASSES", "make_dataset", "ensure_demo_dataset",
    "plan_videos", "render_video",
    "BadVideo", "container_truncated", "fetch_video", "open_video", "read_frames", "read_unique",
    "train_indices", "eval_indices", "window_size", "Crop", "CropError", "crop_corners", "spatial_crops",
    "normalize_on_device",
]
