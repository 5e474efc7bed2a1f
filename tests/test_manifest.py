"""Manifests from the official Kinetics layout and from list files, checked against the CSVs and
the files on disk read independently (csv module, os.walk), never against the manifest code."""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from nlray.data import dataset, manifest, synthetic
from nlray.data.dataset import build_manifest
from nlray.data.manifest import ManifestError, read_manifest, write_manifest


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("manifest") / "tiny"
    synthetic.make_dataset(str(root), synthetic.TINY_SPEC)
    return root


def expected_rows(root: Path) -> dict[str, tuple[str, str]]:
    """video file path -> (label, normalised split), from the CSVs and a walk of the folders."""
    files = {p.stem: p for p in root.rglob("*.mp4")}
    out = {}
    for name, split in (("train.csv", "train"), ("validate.csv", "val")):
        with open(root / "annotations" / name, newline="") as f:
            for r in csv.DictReader(f):
                stem = f"{r['youtube_id']}_{int(r['time_start']):06d}_{int(r['time_end']):06d}"
                out[str(files[stem])] = (r["label"], split)
    return out


def test_official_layout_per_class_folders(tiny_root):
    df, labels, missing = build_manifest(str(tiny_root))
    assert missing == []
    assert labels == sorted(synthetic.TINY_SPEC.classes)
    want = expected_rows(tiny_root)
    got = {u: (lab, s) for u, lab, s in zip(df["uri"], df["label"], df["split"])}
    assert got == want
    assert [labels[i] for i in df["label_id"]] == list(df["label"])
    assert list(df["size"]) == [os.path.getsize(u) for u in df["uri"]]
    assert list(df.columns[:6]) == list(manifest.MANIFEST_COLUMNS)
    assert set(df["split"]) == {"train", "val"}  # "validate" normalised


def write_layout(root: Path, csvs: dict[str, str], videos: list[str]) -> None:
    (root / "annotations").mkdir(parents=True)
    for name, text in csvs.items():
        (root / "annotations" / name).write_text(text)
    for rel in videos:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"not decoded here")


def test_flat_layout_val_csv_is_cc_test_without_labels_and_missing(tmp_path):
    write_layout(tmp_path, {
        "train.csv": "label,youtube_id,time_start,time_end,split,is_cc\n"
                     "\"passing American football (in game)\",a_b-c,10,20,train,0\n"
                     "abseiling,0001,0,10,train,0\nabseiling,0001,0,10,train,0\n"  # duplicate row
                     "abseiling,gone,5,15,train,0\n",
        "val.csv": "label,youtube_id,time_start,time_end,split\nabseiling,vvv,1,11,val\n",
        "test.csv": "youtube_id,time_start,time_end,split\nttt,30,40,test\n",
    }, ["train/a_b-c_000010_000020.mp4", "train/0001_000000_000010.mp4", "val/vvv.mp4",
        "test/ttt_000030_000040.mp4"])
    df, labels, missing = build_manifest(str(tmp_path))
    assert labels == ["abseiling", "passing American football (in game)"]
    assert missing == ["train/abseiling/gone_000005_000015.mp4"]
    rows = {Path(u).relative_to(tmp_path).as_posix(): (lab, i, s)
            for u, lab, i, s in zip(df["uri"], df["label"], df["label_id"], df["split"])}
    assert rows == {"train/a_b-c_000010_000020.mp4": ("passing American football (in game)", 1, "train"),
                    "train/0001_000000_000010.mp4": ("abseiling", 0, "train"),
                    "val/vvv.mp4": ("abseiling", 0, "val"),  # {youtube_id}.mp4 naming
                    "test/ttt_000030_000040.mp4": ("", -1, "test")}  # unlabelled test set


def test_list_files_with_names_ids_and_label_files(tmp_path):
    for rel in ("videos/a b.mp4", "videos/c.mp4", "videos/d.mp4"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"12345")
    (tmp_path / "train.txt").write_text("videos/a b.mp4 riding\n\nvideos/c.mp4 abseiling\n"
                                        "videos/zz.mp4 riding\n")
    (tmp_path / "val.txt").write_text("videos/d.mp4 riding\n")
    df, labels, missing = build_manifest(str(tmp_path))
    assert labels == ["abseiling", "riding"] and missing == ["train/videos/zz.mp4"]
    assert sorted(zip(df["video_id"], df["label"], df["label_id"], df["split"])) == [
        ("a b", "riding", 1, "train"), ("c", "abseiling", 0, "train"), ("d", "riding", 1, "val")]
    assert set(df["size"]) == {5}
    # Integer labels (mmaction2): ids kept, names from classids.json ({name: id}) beside the list.
    ints = tmp_path / "k400_val_list_videos.txt"
    ints.write_text("videos/c.mp4 2\nvideos/d.mp4 0\n")
    df, labels, _ = build_manifest(str(ints))
    assert list(df["label_id"]) == [2, 0] and labels == ["0", "1", "2"]
    (tmp_path / "classids.json").write_text(json.dumps({"zebra": 0, "ant": 1, "bee": 2}))
    df, labels, _ = build_manifest(str(ints))
    assert labels == ["zebra", "ant", "bee"] and list(df["label"]) == ["bee", "zebra"]
    assert set(df["split"]) == {"val"}
    ints.write_text("videos/c.mp4 2\nvideos/d.mp4 riding\n")
    with pytest.raises(ManifestError, match="mix integer ids and class names"):
        build_manifest(str(ints))


def test_write_read_round_trip_local_and_s3(tmp_path, tiny_root, s3_bucket):
    df, labels, missing = build_manifest(str(tiny_root))
    for out in (str(tmp_path / "m" / "manifest.parquet"), f"s3://{s3_bucket}/m/manifest.parquet"):
        written = write_manifest(df, labels, out, missing=["x/y.mp4"])
        back, back_labels = read_manifest(out)
        pd.testing.assert_frame_equal(back, df)
        assert back_labels == labels
        assert written["labels"] == out.replace("manifest.parquet", "labels.json")
    assert json.loads((tmp_path / "m" / "labels.json").read_text()) == labels
    assert (tmp_path / "m" / "missing.txt").read_text() == "x/y.mp4\n"
    # A Parquet file written by someone else (no metadata): labels come from labels.json beside.
    df.to_parquet(tmp_path / "m" / "plain.parquet")
    assert read_manifest(str(tmp_path / "m" / "plain.parquet"))[1] == labels


def test_resolve_dataset_demo_parquet_and_cached_root(tmp_path, tiny_root):
    cfg = SimpleNamespace(root="", cache_dir=str(tmp_path / "cache"), s3_endpoint_url="",
                          train_split="train", val_split="val")
    df, labels = dataset.resolve_dataset(cfg, demo_spec=synthetic.TINY_SPEC)
    assert labels == sorted(synthetic.TINY_SPEC.classes)
    assert all(u.startswith(str(tmp_path / "cache" / "synthetic")) for u in df["uri"])
    assert len(df) == 12 and all(os.path.exists(u) for u in df["uri"])
    cfg.root = str(tiny_root)
    first, _ = dataset.resolve_dataset(cfg)
    cached = list((tmp_path / "cache" / "manifests").rglob("manifest.parquet"))
    assert len(cached) == 2  # the demo root's and this root's
    pd.testing.assert_frame_equal(dataset.resolve_dataset(cfg)[0], first)
    write_manifest(first, labels, str(tmp_path / "given.parquet"))
    cfg.root = str(tmp_path / "given.parquet")
    pd.testing.assert_frame_equal(dataset.resolve_dataset(cfg)[0], first)
    cfg.train_split, cfg.val_split = "training_set", "holdout"
    with pytest.raises(ManifestError, match="training_set"):
        dataset.resolve_dataset(cfg)


def test_bad_roots_and_annotations_name_the_problem(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ManifestError, match="empty: found neither annotations"):
        build_manifest(str(tmp_path / "empty"))
    write_layout(tmp_path / "cols", {"train.csv": "label,yt,start\nx,y,1\n"}, [])
    with pytest.raises(ManifestError, match="train.csv.*lack.*time_end"):
        build_manifest(str(tmp_path / "cols"))
    write_layout(tmp_path / "times", {"train.csv": "label,youtube_id,time_start,time_end,split\n"
                                                   "x,y,soon,10,train\n"}, [])
    with pytest.raises(ManifestError, match="'soon'"):
        build_manifest(str(tmp_path / "times"))
    with pytest.raises(ManifestError, match="'holdout'"):
        manifest.normalise_split("holdout")
    with pytest.raises(ValueError, match="must end with .parquet"):
        write_manifest(pd.DataFrame(), [], str(tmp_path / "m.csv"))


def test_package_exports_every_listed_name():
    import nlray.data

    for name in nlray.data.__all__:
        assert getattr(nlray.data, name) is not None, name
    assert nlray.data.read_bytes.__module__ == "nlray.data.storage"
    with pytest.raises(AttributeError, match="no_such_name"):
        nlray.data.no_such_name
