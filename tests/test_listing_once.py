"""One listing of the root per manifest build: the list layout finds its missing videos in the listing it
already has (a set lookup), not with a request per video (issue 16, item 5: ~13,000 sequential HEADs for
Kinetics). Requests are counted where they happen: on nlray's own boto3 client against the moto S3
endpoint (a botocore event hook), and as os.stat calls for a local root."""
from __future__ import annotations

import os
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

import boto3
import pytest

from nlray.data.dataset import build_manifest, scan_dataset
from nlray.data.storage import s3_client

PRESENT = 150  # videos that exist; the lists name these and some more that do not


def list_text(missing: int) -> str:
    rows = [f"videos/v{i:04d}.mp4 {'ab' if i % 2 else 'cd'}" for i in range(PRESENT)]
    rows += [f"videos/gone{i:04d}.mp4 ab" for i in range(missing)]
    return "\n".join(rows) + "\n"


@contextmanager
def s3_requests(endpoint: str):
    """Counter of the S3 operations (HeadObject, GetObject, ListObjectsV2...) nlray's client sends meanwhile;
    ListObjectsV2 calls of one key (MaxKeys=1: check_access / a bucket check) counted as ``probe``."""
    counts: Counter = Counter()

    def hook(params, model, **_):
        name = model.name
        if name == "ListObjectsV2" and params.get("MaxKeys") == 1:
            name = "probe"
        counts[name] += 1

    events = s3_client.client(endpoint).meta.events  # the cached client every nlray S3 call uses
    events.register("before-parameter-build.s3", hook, unique_id="test-listing-once")
    try:
        yield counts
    finally:
        events.unregister("before-parameter-build.s3", unique_id="test-listing-once")


def put_root(endpoint: str, bucket: str, prefix: str, missing: int) -> str:
    s3 = boto3.client("s3", endpoint_url=endpoint)
    for i in range(PRESENT):
        s3.put_object(Bucket=bucket, Key=f"{prefix}/videos/v{i:04d}.mp4", Body=b"x" * (i + 1))
    s3.put_object(Bucket=bucket, Key=f"{prefix}/train.txt", Body=list_text(missing).encode())
    return f"s3://{bucket}/{prefix}"


@pytest.mark.parametrize("as_file", [False, True], ids=["root-folder", "root-list-file"])
def test_s3_list_layout_requests_do_not_grow_with_missing_videos(s3_endpoint, s3_bucket, as_file):
    seen = {}
    for missing in (5, 50):
        root = put_root(s3_endpoint, s3_bucket, f"m{missing}", missing)
        target = f"{root}/train.txt" if as_file else root
        with s3_requests(s3_endpoint) as counts:
            df, labels, gone = build_manifest(target, endpoint_url=s3_endpoint)
        assert len(df) == PRESENT and len(gone) == missing and labels == ["ab", "cd"]
        assert set(gone) == {f"train/videos/gone{i:04d}.mp4" for i in range(missing)}
        assert dict(zip(df["video_id"], df["size"]))["v0009"] == 10
        seen[missing] = dict(counts)
    # the same requests for 5 and for 50 missing videos: none per missing video
    assert seen[5] == seen[50], seen
    # one listing (151 objects: one page), one read of the list; a root folder: a probe of access; a list
    # file as root: the probe, a HEAD to tell it from a folder
    expected = {"ListObjectsV2": 1, "GetObject": 1, "probe": 1, **({"HeadObject": 1} if as_file else {})}
    assert seen[50] == expected, seen


def test_s3_rows_outside_the_root_are_still_looked_up_one_by_one(s3_endpoint, s3_bucket):
    """allow_outside_root: a row outside the lists' folder is not in the listing; it is asked for alone."""
    root = put_root(s3_endpoint, s3_bucket, "in", 3)
    boto3.client("s3", endpoint_url=s3_endpoint).put_object(Bucket=s3_bucket, Key="elsewhere.mp4", Body=b"abc")
    text = list_text(3) + "../elsewhere.mp4 ab\n../nowhere.mp4 ab\n"
    boto3.client("s3", endpoint_url=s3_endpoint).put_object(Bucket=s3_bucket, Key="in/train.txt",
                                                            Body=text.encode())
    with s3_requests(s3_endpoint) as counts:
        scan = scan_dataset(root, endpoint_url=s3_endpoint, allow_outside_root=True)
    assert len(scan.manifest) == PRESENT + 1 and len(scan.missing) == 3 + 1
    assert f"s3://{s3_bucket}/elsewhere.mp4" in set(scan.manifest["uri"])
    assert counts["HeadObject"] == 2 and counts["ListObjectsV2"] == 1, counts  # the two outside rows only


def make_local_root(base: Path, missing: int, *, absolute: bool = False) -> Path:
    root = base / f"local{missing}"
    (root / "videos").mkdir(parents=True)
    for i in range(PRESENT):
        (root / "videos" / f"v{i:04d}.mp4").write_bytes(b"x" * (i + 1))
    text = list_text(missing)
    if absolute:  # rows as absolute plain paths below the root, the root given as file://
        text = "".join(f"{root}/{line}\n" for line in text.splitlines())
    (root / "train.txt").write_text(text)
    return root


@contextmanager
def stat_calls(monkeypatch):
    calls: list[str] = []
    real = os.stat

    def counting(path, *args, **kwargs):
        calls.append(os.fsdecode(path) if isinstance(path, (str, bytes, os.PathLike)) else str(path))
        return real(path, *args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(os, "stat", counting)
        yield calls


@pytest.mark.parametrize("absolute", [False, True], ids=["relative-rows", "absolute-rows-file-uri"])
def test_local_list_layout_stats_no_missing_video(tmp_path, monkeypatch, absolute):
    totals = {}
    for missing in (5, 50):
        root = make_local_root(tmp_path, missing, absolute=absolute)
        target = f"file://{root}" if absolute else str(root)
        with stat_calls(monkeypatch) as calls:
            df, _, gone = build_manifest(target)
        assert len(df) == PRESENT and len(gone) == missing
        assert not [c for c in calls if "gone" in c], "a missing video was looked up on its own"
        totals[missing] = len([c for c in calls if c.startswith(str(root))])  # the root's files and folders
    assert totals[5] == totals[50], totals  # the listing (each file once) and a few checks of the root
