"""Untrusted dataset files and objects (issue 18, findings 3 and 4): what a list file, an annotation
or an object may make nlray read, write or spend.

Storage: local reads take regular files only (a device, a FIFO, /proc are refused before a byte is
read), a byte cap is enforced before the bytes are in memory (local and S3), a symlink loop lists in
bounded time. Dataset paths: a row naming a file outside the dataset's root is refused and counted
(``outside_root``) unless ``data.allow_outside_root``. Transcode writes only below its output root.
Probe runs PyAV with the per-video limits."""
from __future__ import annotations

import os
import threading
import time

import pytest

from nlray.data import storage
from nlray.data.storage import MissingObjectError, StorageError  # the new errors: storage.X in the tests


# ------------------------------------------------------------------------------------- storage


def test_read_bytes_refuses_devices_fifos_and_proc_promptly(tmp_path):
    fifo = tmp_path / "pipe.mp4"
    os.mkfifo(fifo)  # no writer: a plain open would block for ever
    # /proc first: on code without the check it is read (and the test fails) before /dev/zero would
    # fill the memory or the FIFO block for ever
    for uri in ("/proc/self/environ", "/dev/zero", f"file://{fifo}", str(tmp_path)):
        start = time.monotonic()
        with pytest.raises(StorageError, match="refused") as info:
            storage.read_bytes(uri)
        assert time.monotonic() - start < 2.0, uri
        assert isinstance(info.value, storage.NotRegularFileError)
        assert isinstance(info.value, MissingObjectError)  # a decoder drops that one video
    # a link inside the dataset to a device is refused the same way
    (tmp_path / "link.mp4").symlink_to("/dev/zero")
    with pytest.raises(storage.NotRegularFileError, match="character device"):
        storage.read_bytes(str(tmp_path / "link.mp4"), max_bytes=None)


def test_read_bytes_byte_cap_local(tmp_path):
    path = tmp_path / "v.mp4"
    path.write_bytes(b"x" * 101)
    assert storage.read_bytes(str(path), max_bytes=101) == b"x" * 101
    with pytest.raises(storage.ObjectTooLargeError, match=r"101 bytes, over the limit of 100 bytes") as info:
        storage.read_bytes(str(path), max_bytes=100)
    assert (info.value.size, info.value.limit) == (101, 100)
    assert isinstance(info.value, StorageError) and not isinstance(info.value, MissingObjectError)


def test_read_bytes_byte_cap_reads_at_most_limit_plus_one(tmp_path, monkeypatch):
    """A file that grows after its size was taken (fstat said small) is still cut at limit + 1."""
    from nlray.data.storage import local

    path = tmp_path / "grows.mp4"
    path.write_bytes(b"x" * 10)
    real_fstat = os.fstat

    class Small:  # fstat's answer, as if taken before the file grew to 10 MB
        def __init__(self, st):
            self.st_mode, self.st_dev, self.st_size = st.st_mode, st.st_dev, 1

    monkeypatch.setattr(local.os, "fstat", lambda fd: Small(real_fstat(fd)))
    path.write_bytes(b"x" * 10_000_000)
    got = []
    real_read = local.os.read
    monkeypatch.setattr(local.os, "read", lambda fd, n: got.append(len(real_read(fd, n))) or b"x" * got[-1])
    with pytest.raises(storage.ObjectTooLargeError) as info:
        storage.read_bytes(str(path), max_bytes=1000)
    assert sum(got) == 1001 and info.value.limit == 1000  # not the 10 MB the file holds


def test_read_bytes_byte_cap_s3_one_request_body_unread(s3_bucket, monkeypatch):
    import boto3
    from botocore.response import StreamingBody

    big = b"v" * 3_000_000
    boto3.client("s3").put_object(Bucket=s3_bucket, Key="big.mp4", Body=big)
    uri = f"s3://{s3_bucket}/big.mp4"
    read_sizes = []
    real_read = StreamingBody.read
    monkeypatch.setattr(StreamingBody, "read", lambda self, amt=None: read_sizes.append(amt) or real_read(self, amt))
    calls = []
    from nlray.data.storage import s3_client
    real_client = s3_client.client

    def counting_client(endpoint_url=""):
        c = real_client(endpoint_url)
        c.meta.events.register("before-call.s3", lambda model, **kw: calls.append(model.name))
        return c

    monkeypatch.setattr("nlray.data.storage.s3.client", counting_client)
    with pytest.raises(storage.ObjectTooLargeError, match=r"3000000 bytes, over the limit of 1000 bytes") as info:
        storage.read_bytes(uri, max_bytes=1000)
    assert (info.value.size, info.value.limit) == (3_000_000, 1000)
    assert read_sizes == []  # refused from ContentLength: not a byte of the body read
    assert calls.count("GetObject") == 1 and "HeadObject" not in calls
    assert storage.read_bytes(uri, max_bytes=len(big)) == big


def test_local_listing_does_not_follow_symlink_loops(tmp_path):
    root = tmp_path / "k400"
    (root / "train" / "a").mkdir(parents=True)
    (root / "train" / "a" / "x.mp4").write_bytes(b"x")
    (root / "loops").mkdir()
    (root / "loops" / "one").symlink_to(".")  # issue 18: two links to "." listed 136k folders in 5 s
    (root / "loops" / "two").symlink_to(".")
    (root / "train" / "a" / "up").symlink_to("..")
    elsewhere = tmp_path / "linked"
    elsewhere.mkdir()
    (elsewhere / "y.mp4").write_bytes(b"yy")
    (root / "train" / "b").symlink_to(elsewhere)  # a dataset assembled from links still lists
    result: dict = {}
    worker = threading.Thread(target=lambda: result.update(out=storage.list_files(str(root))), daemon=True)
    start = time.monotonic()
    worker.start()
    worker.join(timeout=10)
    assert not worker.is_alive(), "listing a symlink loop did not end within 10 s"
    assert time.monotonic() - start < 10
    assert result["out"] == [(f"{root}/train/a/x.mp4", 1), (f"{root}/train/b/y.mp4", 2)]
    # a dangling link and a link to a device are not files of the dataset
    (root / "train" / "dead").symlink_to("nowhere")
    (root / "train" / "zero.mp4").symlink_to("/dev/zero")
    assert storage.list_files(str(root)) == result["out"]


# ------------------------------------------------------------------------------- dataset paths


def hostile_rows(tmp_path) -> dict[str, str]:
    """Rows a hostile list file may hold, by name; the files they name exist (so that only the
    containment check can keep them out). The dataset root is ``tmp_path/data/k400``."""
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "evil.mp4").write_bytes(b"victim's bytes")
    sibling = tmp_path / "data" / "k400-evil"  # shares the root's string prefix
    sibling.mkdir(parents=True)
    (sibling / "x.mp4").write_bytes(b"sibling")
    return {"dotdot": "../../victim/evil.mp4", "dotdot_inside_first": "a/../../../victim/evil.mp4",
            "absolute": "/etc/hostname", "file_uri": "file:///etc/passwd", "device": "/dev/zero",
            "proc": "/proc/self/environ", "sibling_prefix": f"{sibling}/x.mp4"}


def make_list_root(tmp_path, rows: list[str]) -> str:
    root = tmp_path / "data" / "k400"
    for rel in ("a/x.mp4", "b/y.mp4"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"video")
    lines = ["a/x.mp4 cat", "./b//y.mp4 dog", *(f"{r} cat" for r in rows)]
    (root / "train.txt").write_text("\n".join(lines) + "\n")
    return str(root)


def test_list_rows_outside_the_root_are_refused_and_counted(tmp_path, caplog):
    from nlray.data import dataset

    rows = hostile_rows(tmp_path)
    root = make_list_root(tmp_path, list(rows.values()))
    df0, _, missing0 = dataset.build_manifest(root)  # the plain 3-tuple, as before
    assert list(df0["uri"]) == [f"{root}/a/x.mp4", f"{root}/b/y.mp4"] and missing0 == []
    with caplog.at_level("WARNING", logger="nlray"):
        df, labels, missing, outside = dataset.scan_dataset(root)
    assert list(df["uri"]) == [f"{root}/a/x.mp4", f"{root}/b/y.mp4"]  # the legitimate rows, normalised
    assert labels == ["cat", "dog"] and missing == []  # refused rows are never checked for existence
    assert outside == [f"train.txt: {r}" for r in rows.values()]
    line = next(r.getMessage() for r in caplog.records if "outside_root" in r.getMessage())
    assert f"{len(rows)} row(s) refused (outside_root)" in line and "../../victim/evil.mp4" in line
    assert "data.allow_outside_root" in line
    # the list file as the root: the same rows refused (its folder is the root)
    df3, _, _, outside3 = dataset.scan_dataset(f"{root}/train.txt")
    assert len(df3) == 2 and len(outside3) == len(rows)


def test_list_rows_outside_the_root_kept_when_allowed(tmp_path):
    from nlray.data import dataset

    rows = hostile_rows(tmp_path)
    rows["other_scheme"] = "gs://bucket/x.mp4"
    root = make_list_root(tmp_path, list(rows.values()))
    df, _, missing, outside = dataset.scan_dataset(root, allow_outside_root=True)
    uris = set(df["uri"])
    assert {f"{root}/a/x.mp4", f"{root}/b/y.mp4", str(tmp_path / "victim" / "evil.mp4"),
            "/dev/zero", "/etc/hostname", "file:///etc/passwd", f"{tmp_path}/data/k400-evil/x.mp4"} <= uris
    assert not any(".." in u for u in uris)  # what is read is what was checked: normalised
    assert outside == ["train.txt: gs://bucket/x.mp4"]  # a scheme nlray cannot read stays refused
    # resolve_dataset threads data.allow_outside_root through (a cache entry per setting)
    cfg = dict(root=root, s3_endpoint_url="", cache_dir=str(tmp_path / "cache"), synthetic="tiny",
               train_split="train", val_split="val")
    from types import SimpleNamespace

    strict, _ = dataset.resolve_dataset(SimpleNamespace(**cfg, allow_outside_root=False))
    loose, _ = dataset.resolve_dataset(SimpleNamespace(**cfg, allow_outside_root=True))
    assert len(strict) == 2 and len(loose) == len(df)
    written = sorted(len(p.read_text().splitlines()) for p in (tmp_path / "cache").rglob("outside_root.txt"))
    assert written == [1, len(rows)]  # beside each cached manifest: gs:// only, then every hostile row


def test_list_rows_outside_an_s3_root_are_refused(s3_bucket):
    import boto3

    from nlray.data import dataset

    s3 = boto3.client("s3")
    for key in ("k/v/a.mp4", "outside.mp4", "k-evil/x.mp4"):
        s3.put_object(Bucket=s3_bucket, Key=key, Body=b"video")
    hostile = ["../outside.mp4", "v/../../outside.mp4", f"s3://{s3_bucket}/k-evil/x.mp4",
               f"s3://{s3_bucket}/k/../outside.mp4", "s3://other-bucket/x.mp4", "/etc/hostname",
               "file:///etc/passwd"]
    body = "\n".join(["v/a.mp4 cat", f"s3://{s3_bucket}/k/v/a.mp4 cat", *(f"{h} cat" for h in hostile)])
    s3.put_object(Bucket=s3_bucket, Key="k/train.txt", Body=body.encode())
    df, _, missing = dataset.build_manifest(f"s3://{s3_bucket}/k")
    assert list(df["uri"]) == [f"s3://{s3_bucket}/k/v/a.mp4"] and missing == []
    df, _, missing, outside = dataset.scan_dataset(f"s3://{s3_bucket}/k")
    assert outside == [f"train.txt: {h}" for h in hostile]


def test_kinetics_annotation_rows_naming_paths_are_refused(tmp_path):
    from nlray.data import dataset

    root = tmp_path / "k400"
    (root / "annotations").mkdir(parents=True)
    (root / "train" / "cat").mkdir(parents=True)
    (root / "train" / "cat" / "abcdefghijk_000000_000010.mp4").write_bytes(b"video")
    (tmp_path / "victim").mkdir()
    (tmp_path / "victim" / "evil_000000_000010.mp4").write_bytes(b"victim's bytes")
    hostile = ["../../victim/evil", "/etc/hostname", "file:///etc/passwd", "/dev/zero",
               "s3://other-bucket/x", "/proc/self/environ"]
    lines = ["label,youtube_id,time_start,time_end,split", "cat,abcdefghijk,0,10,train",
             "cat,lmnopqrstuv,0,10,train", *(f"cat,{h},0,10,train" for h in hostile)]
    (root / "annotations" / "train.csv").write_text("\n".join(lines) + "\n")
    df, _, missing = dataset.build_manifest(str(root))
    assert len(df) == 1 and missing == ["train/cat/lmnopqrstuv_000000_000010.mp4"]  # hostile ids: not "missing"
    for allow in (False, True):  # this layout never names a file outside its root
        df, labels, missing, outside = dataset.scan_dataset(str(root), allow_outside_root=allow)
        assert list(df["uri"]) == [f"{root}/train/cat/abcdefghijk_000000_000010.mp4"]
        assert missing == ["train/cat/lmnopqrstuv_000000_000010.mp4"]  # an honest id, not there
        assert outside == [f"train.csv: youtube_id {h}" for h in hostile]


def test_prepare_kinetics_reports_outside_root(tmp_path, capsys):
    import json
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "jobs"))
    import prepare_kinetics

    rows = hostile_rows(tmp_path)
    root = make_list_root(tmp_path, list(rows.values()))
    out = tmp_path / "out" / "manifest.parquet"
    assert prepare_kinetics.main(["--root", root, "--out", str(out)]) == 0
    printed = capsys.readouterr().out.splitlines()
    summary = json.loads(printed[-1])
    assert summary["videos"] == 2 and summary["outside_root"] == len(rows)
    assert any(f"{len(rows)} row(s) refused (outside_root)" in line for line in printed)
    assert (tmp_path / "out" / "outside_root.txt").read_text().splitlines() == [
        f"train.txt: {r}" for r in rows.values()]
    assert summary["files"]["outside_root"] == str(tmp_path / "out" / "outside_root.txt")
    assert prepare_kinetics.main(["--root", root, "--out", str(out), "--allow-outside-root"]) == 0
    allowed = json.loads(capsys.readouterr().out.splitlines()[-1])
    # every hostile row kept, but two of them name the same file (victim/evil.mp4): one row
    assert allowed["outside_root"] == 0 and allowed["videos"] == 2 + len(rows) - 1


# ---------------------------------------------------------------------------------- transcode


def tree(path) -> set[str]:
    return {str(p) for p in path.rglob("*")}


def test_transcode_writes_nothing_outside_its_output_root(tmp_path):
    from tests.videos import write_video

    from nlray.data import transcode

    src, out = tmp_path / "data" / "src", tmp_path / "out" / "deep" / "er"
    src.mkdir(parents=True)
    write_video(src / "good.mp4", num_frames=8, width=32, height=32)
    (tmp_path / "victim").mkdir()
    write_video(tmp_path / "victim" / "evil.mp4", num_frames=8, width=32, height=32)  # a real video
    (tmp_path / "data" / "src-evil").mkdir()
    write_video(tmp_path / "data" / "src-evil" / "x.mp4", num_frames=8, width=32, height=32)
    uris = [f"{src}/good.mp4", f"{src}/../../victim/evil.mp4", f"{src}/a/../../../victim/evil.mp4"]
    before = tree(tmp_path)
    fn = transcode.TranscodeFn(root=str(src), out_root=str(out), short_side=32, keyint=4)
    import pandas as pd

    result = fn(pd.DataFrame({"uri": uris}))
    created = tree(tmp_path) - before  # no file and no folder outside out_root
    assert created == {str(tmp_path / "out"), str(tmp_path / "out" / "deep"), str(out), f"{out}/good.mp4"}
    assert list(result["status"]) == ["ok", "outside_root", "outside_root"]
    assert list(result["out_uri"]) == [f"{out}/good.mp4", "", ""]
    # a string-prefix sibling and a file:// spelling of an escape are refused the same way
    more = [f"{tmp_path}/data/src-evil/x.mp4", f"file://{src}/../../victim/evil.mp4"]
    assert list(fn(pd.DataFrame({"uri": more}))["status"]) == ["outside_root", "outside_root"]
    assert tree(tmp_path) - before == created
    uris += more
    # the job refuses a manifest none of whose rows is below the root (normalised)
    with pytest.raises(ValueError, match="no video of the manifest is below root"):
        transcode.transcode_dataset(pd.DataFrame({"uri": uris[1:]}), root=str(src), out_root=str(out))


def test_transcode_applies_the_video_limits(tmp_path):
    from tests.videos import write_video

    import pandas as pd

    from nlray.data import transcode
    from nlray.data.badvideo import VideoLimits

    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    write_video(src / "ok.mp4", num_frames=8, width=32, height=32)
    write_video(src / "tall.mp4", num_frames=2, width=16, height=1024)  # aspect 64
    write_video(src / "long.mp4", num_frames=40, width=32, height=32)
    big = write_video(src / "big.mp4", num_frames=40, width=64, height=64, crf=0)
    limits = VideoLimits(max_bytes=big.stat().st_size - 1, max_frame_pixels=64 * 64, max_aspect_ratio=4.0,
                         max_packets=30, timeout_s=30.0)
    fn = transcode.TranscodeFn(root=str(src), out_root=str(out), short_side=32, keyint=4, limits=limits)
    names = ["ok.mp4", "tall.mp4", "long.mp4", "big.mp4"]
    result = fn(pd.DataFrame({"uri": [str(src / n) for n in names]}))
    assert dict(zip(names, result["status"])) == {"ok.mp4": "ok", "tall.mp4": "frame_size",
                                                  "long.mp4": "too_many_packets", "big.mp4": "too_large"}
    assert sorted(p.name for p in out.iterdir()) == ["ok.mp4"]
    slow = transcode.TranscodeFn(root=str(src), out_root=str(out), short_side=32, keyint=4,
                                 limits=VideoLimits(timeout_s=0.0))
    assert list(slow(pd.DataFrame({"uri": [str(src / "long.mp4")]}))["status"]) == ["timeout"]


# --------------------------------------------------------------------------------------- probe


def test_probe_uses_pyav_not_decord(tmp_path, monkeypatch):
    import sys

    import pandas as pd
    from tests.videos import write_video

    from nlray.data.probe import ProbeFn

    write_video(tmp_path / "v.mp4", num_frames=12, width=48, height=32)
    monkeypatch.setitem(sys.modules, "decord", None)  # `import decord` fails: only PyAV can answer
    probed = ProbeFn()(pd.DataFrame({"uri": [str(tmp_path / "v.mp4")]}))
    row = probed.iloc[0]
    assert (row["status"], row["num_frames"], row["width"], row["height"]) == ("ok", 12, 48, 32), row["error"]
    assert row["fps"] == pytest.approx(30.0)


def test_probe_drops_videos_over_the_limits_by_reason(tmp_path):
    import pandas as pd
    from tests.videos import write_video

    from nlray.data.badvideo import VideoLimits
    from nlray.data.probe import ProbeFn

    write_video(tmp_path / "ok.mp4", num_frames=8, width=32, height=32)
    write_video(tmp_path / "tall.mp4", num_frames=2, width=16, height=16384)  # issue 18's 16x16384
    default = ProbeFn()(pd.DataFrame({"uri": [str(tmp_path / "tall.mp4")]}))  # the default limits
    assert default["status"][0] == "frame_size"
    write_video(tmp_path / "wide.mp4", num_frames=2, width=256, height=32)  # aspect 8
    write_video(tmp_path / "huge.mp4", num_frames=2, width=128, height=128)  # 16384 pixels
    write_video(tmp_path / "long.mp4", num_frames=60, width=32, height=32)
    big = write_video(tmp_path / "big.mp4", num_frames=30, width=64, height=64, crf=0)
    limits = VideoLimits(max_bytes=big.stat().st_size - 1, max_frame_pixels=64 * 64, max_aspect_ratio=4.0,
                         max_packets=50, timeout_s=30.0)
    names = ["ok.mp4", "tall.mp4", "wide.mp4", "huge.mp4", "long.mp4", "big.mp4", "gone.mp4"]
    probed = ProbeFn(limits=limits)(pd.DataFrame({"uri": [str(tmp_path / n) for n in names]}))
    assert dict(zip(names, probed["status"])) == {
        "ok.mp4": "ok", "tall.mp4": "frame_size", "wide.mp4": "frame_size", "huge.mp4": "frame_size",
        "long.mp4": "too_many_packets", "big.mp4": "too_large", "gone.mp4": "missing"}
    assert "16x16384" in probed["error"][1]
    # /dev/zero named by an allowed row: refused by the store at once, never read
    start = time.monotonic()
    zero = ProbeFn(limits=limits)(pd.DataFrame({"uri": ["/dev/zero"]}))
    assert zero["status"][0] == "missing" and time.monotonic() - start < 5
    # the deadline starts before the fetch: none left means a timeout, whatever the video
    assert ProbeFn(limits=VideoLimits(timeout_s=0.0))(pd.DataFrame({"uri": [str(tmp_path / "ok.mp4")]}))[
        "status"][0] == "timeout"


def test_s3_capped_read_of_a_body_cut_short_is_retried_not_accepted(monkeypatch):
    """With a cap the body is read in bounded chunks; one that ends before its ContentLength is an
    IncompleteReadError (retried, then UnreachableError), never a shorter video."""
    import io

    from botocore.response import StreamingBody

    from nlray.data.storage import s3, s3_client

    monkeypatch.setattr(s3_client, "BACKOFF_BASE_S", 0.0)
    answers = []

    class Client:
        def get_object(self, Bucket, Key):
            answers.append(Key)
            return {"ContentLength": 10, "Body": StreamingBody(io.BytesIO(b"12345"), 10)}

    monkeypatch.setattr(s3, "client", lambda endpoint_url="": Client())
    with pytest.raises(storage.UnreachableError, match="IncompleteRead"):
        storage.read_bytes("s3://bkt/cut.mp4", max_bytes=100)
    assert len(answers) == s3_client.MAX_ATTEMPTS
