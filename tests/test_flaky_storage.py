"""Training data and checkpoints through a flaky object store: a fault-injecting proxy (faultproxy.py)
in front of the real moto S3 endpoint answers 500, 503, SlowDown, resets, stalls and late answers.

Every clip's pixels say which video and frames it holds (videos.py), so an epoch through the proxy is
checked against the videos themselves: each exactly once, with its own label and frames.
"""
from __future__ import annotations

import time

import boto3
import numpy as np
import pandas as pd
import pyarrow.fs as pafs
import pytest

from faultproxy import FAILING_KINDS, FAULT_KINDS, FaultProxy
from nlray.config import DataConfig
from nlray.data import storage
from nlray.data.badvideo import BadVideo
from nlray.data.clips import MAX_UNREACHABLE_IN_A_ROW, ClipDecoder
from nlray.data.decode import fetch_video
from nlray.data.pipeline import bad_video_counts, bad_video_list, bad_video_log_name, build_train_dataset
from nlray.data.storage import StorageError, UnreachableError, s3, s3_client
from videos import read_codes, video_bytes

CFG = dict(frames=8, frame_stride=2, train_short_side=[48, 56], crop_size=40, decode_batch=2,
           decode_actors=2, decode_actors_max=0, decode_cpus=0.5, backend="pyav")
# The time to a StorageError that this file holds the storage layer to, every request failing:
# MAX_ATTEMPTS x (connect + read timeouts) + the capped backoffs (s3_client.WORST_CASE_S).
PROMISED_BOUND_S = 60.0
STALL_S = s3_client.READ_TIMEOUT_S + 2.0  # longer than the client waits: a stall must time out


def put_videos(bucket: str, tmp_path, n: int, *, frames: int = 20) -> pd.DataFrame:
    """``n`` videos of labels 0..n-1 written straight to moto; their manifest."""
    rows = []
    for i in range(n):
        uri = f"s3://{bucket}/train/v{i:02d}.mp4"
        storage.write_bytes(uri, video_bytes(tmp_path, f"v{i}.mp4", num_frames=frames, width=64, height=48,
                                             gop=8, label=i))
        rows.append((uri, i))
    return pd.DataFrame({"uri": [u for u, _ in rows], "label_id": [lab for _, lab in rows], "split": "train",
                         "num_frames": frames})


def check_clip(video: np.ndarray, label: int, row: int, df: pd.DataFrame) -> None:
    """One clip against its manifest row: its pixels' label and 8 frames 2 apart (looped if short)."""
    index, content_label = read_codes(video)  # (T,), (T,) from the pixels alone
    n = int(df.num_frames[row])
    assert label == df.label_id[row] and (content_label == df.label_id[row] % 16).all(), row
    start = int(index[0])
    assert index.tolist() == [((start + 2 * j) % n) % 256 for j in range(8)], (row, index)


@pytest.fixture
def proxy_to(s3_endpoint):
    """``proxy_to(**faults)``: a FaultProxy in front of moto, closed after the test."""
    proxies = []

    def make(**kwargs) -> FaultProxy:
        proxies.append(FaultProxy(s3_endpoint, **kwargs).start())
        return proxies[-1]

    yield make
    for p in proxies:
        p.close()


def test_an_epoch_through_a_flaky_store_gives_every_clip_once_with_its_label(ray_local, s3_bucket, tmp_path,
                                                                               proxy_to):
    n = 16  # >= len(FAULT_KINDS) / share requests: every kind is injected at least once
    df = put_videos(s3_bucket, tmp_path, n + 1)  # the last one: every request for it fails
    doomed = df.uri[n]
    proxy = proxy_to(share=0.4, kinds=FAULT_KINDS, stall_s=STALL_S, doomed=[doomed.split("/", 3)[3]])
    ds = build_train_dataset(df, DataConfig(**CFG, s3_endpoint_url=proxy.url), run_name="test_flaky_epoch")
    seen = []
    for batch in ds.iter_batches(batch_size=4, batch_format="numpy"):
        for video, label, row in zip(batch["video"], batch["label"], batch["video_idx"]):
            check_clip(video, int(label), int(row), df)
            seen.append(int(row))
    assert sorted(seen) == list(range(n))  # every reachable video exactly once
    log = bad_video_log_name("test_flaky_epoch", "train")
    assert bad_video_counts(log) == {"unreachable": 1}
    [(uri, reason, detail)] = bad_video_list(log)
    assert (uri, reason) == (doomed, "unreachable") and f"{s3_client.MAX_ATTEMPTS} attempts" in detail
    injected = proxy.injected()
    print("faults injected:", injected, "requests:", proxy.counts["requests"])
    assert set(injected) == set(FAULT_KINDS), injected


def test_every_request_failing_gives_a_clear_storage_error_within_the_bound(s3_bucket, proxy_to):
    assert s3_client.WORST_CASE_S == s3_client.worst_case_s() <= PROMISED_BOUND_S
    storage.write_bytes(f"s3://{s3_bucket}/v.mp4", b"video")
    proxy = proxy_to(share=1.0, kinds=FAILING_KINDS, stall_s=STALL_S)  # production timeouts
    start = time.monotonic()
    with pytest.raises(UnreachableError, match=f"v.mp4: gave up after {s3_client.MAX_ATTEMPTS} attempts"):
        storage.read_bytes(f"s3://{s3_bucket}/v.mp4", endpoint_url=proxy.url)
    took = time.monotonic() - start
    print(f"time to error: {took:.1f} s (bound {s3_client.WORST_CASE_S} s), faults {proxy.injected()}")
    assert took < s3_client.WORST_CASE_S
    assert proxy.counts["requests"] == s3_client.MAX_ATTEMPTS and proxy.counts["forwarded"] == 0
    assert proxy.injected().get("stall", 0) >= 1  # a stall was among them and was cut by the read timeout


@pytest.mark.parametrize("kind", FAILING_KINDS)
def test_each_fault_kind_is_retried_then_unreachable(s3_bucket, proxy_to, monkeypatch, kind):
    """Every kind alone, every time: retried MAX_ATTEMPTS times, then UnreachableError within the bound
    of the (shrunk) timeouts; a stall costs the read timeout, not the stall."""
    monkeypatch.setattr(s3_client, "READ_TIMEOUT_S", 0.5)
    monkeypatch.setattr(s3_client, "CONNECT_TIMEOUT_S", 0.5)
    monkeypatch.setattr(s3_client, "BACKOFF_BASE_S", 0.01)
    storage.write_bytes(f"s3://{s3_bucket}/v.mp4", b"video")
    proxy = proxy_to(share=1.0, kinds=[kind], stall_s=5.0)
    start = time.monotonic()
    with pytest.raises(UnreachableError, match="gave up after"):
        storage.read_bytes(f"s3://{s3_bucket}/v.mp4", endpoint_url=proxy.url)
    took = time.monotonic() - start
    assert took < s3_client.worst_case_s() and proxy.injected() == {kind: s3_client.MAX_ATTEMPTS}
    if kind == "stall":
        assert took >= s3_client.MAX_ATTEMPTS * 0.5  # each attempt waited for its read timeout


def test_a_flaky_store_is_retried_to_the_right_bytes(s3_bucket, proxy_to):
    """Writes, reads, HEADs and listings through half-failing requests all succeed, byte for byte."""
    proxy = proxy_to(share=0.5, kinds=["500", "503", "slowdown", "reset", "latency"])
    root = f"s3://{s3_bucket}/flaky"
    blobs = {f"{root}/b{i}.bin": np.random.default_rng(i).bytes(1000 * (i + 1)) for i in range(6)}
    for uri, data in blobs.items():
        storage.write_bytes(uri, data, endpoint_url=proxy.url)
    assert {u: storage.read_bytes(u, endpoint_url=proxy.url) for u in blobs} == blobs
    listed = storage.list_files(root, suffixes=None, endpoint_url=proxy.url)
    assert listed == [(u, len(d)) for u, d in blobs.items()]
    assert all(storage.size(u, endpoint_url=proxy.url) == len(d) for u, d in blobs.items())
    raw = boto3.client("s3")  # an independent reader, straight to moto
    assert all(raw.get_object(Bucket=s3_bucket, Key=u.split("/", 3)[3])["Body"].read() == d
               for u, d in blobs.items())
    assert set(proxy.injected()) == {"500", "503", "slowdown", "reset", "latency"}


def test_a_decoder_drops_an_unreachable_video_and_stops_when_the_store_is_down(s3_bucket, tmp_path, proxy_to,
                                                                               monkeypatch):
    monkeypatch.setattr(s3_client, "BACKOFF_BASE_S", 0.01)
    df = put_videos(s3_bucket, tmp_path, 2)
    proxy = proxy_to(share=1.0, kinds=["500", "503", "slowdown", "reset"])
    with pytest.raises(BadVideo) as err:  # one video: a bad video, not a crash
        fetch_video(df.uri[0], endpoint_url=proxy.url)
    assert err.value.reason == "unreachable" and "gave up after" in err.value.detail
    dec = ClipDecoder(frames=8, stride=2, short_side=(48, 48), crop_size=40, backend="pyav",
                      endpoint_url=proxy.url, log_name="unused")
    uris = [f"s3://{s3_bucket}/train/x{i}.mp4" for i in range(MAX_UNREACHABLE_IN_A_ROW + 3)]
    batch = {"uri": np.array(uris), "label_id": np.zeros(len(uris), int), "video_idx": np.arange(len(uris))}
    start = time.monotonic()
    with pytest.raises(StorageError, match=f"{MAX_UNREACHABLE_IN_A_ROW} videos in a row .* the store is down"):
        list(dec(batch))  # every video unreachable: the store is down, the job must stop
    assert time.monotonic() - start < MAX_UNREACHABLE_IN_A_ROW * s3_client.worst_case_s()
    assert dec.bad_counts == {"unreachable": MAX_UNREACHABLE_IN_A_ROW}
    # a reachable video between unreachable ones resets the count: flaky, not down
    proxy.set_faults(share=0.0)
    dec.unreachable_in_a_row = MAX_UNREACHABLE_IN_A_ROW - 1
    good = {"uri": df.uri.to_numpy(), "label_id": df.label_id.to_numpy(), "video_idx": np.arange(2)}
    [out] = list(dec(good))
    assert out["label"].tolist() == [0, 1] and dec.unreachable_in_a_row == 0


def test_a_missing_bucket_through_the_proxy_stops_a_decoder_at_once(s3_endpoint, proxy_to):
    proxy = proxy_to(share=0.0)
    dec = ClipDecoder(frames=8, stride=2, short_side=(48, 48), crop_size=40, backend="pyav",
                      endpoint_url=proxy.url, log_name="unused")
    batch = {"uri": np.array(["s3://no-such-bucket-flaky/a.mp4"]), "label_id": np.zeros(1, int),
             "video_idx": np.zeros(1, int)}
    with pytest.raises(StorageError, match="bucket does not exist") as err:
        list(dec(batch))
    assert not isinstance(err.value, UnreachableError) and proxy.counts["requests"] == 1  # no retry
    assert dec.bad_counts == {}


def test_a_checkpoint_uploads_intact_through_a_flaky_store(s3_bucket, tmp_path, proxy_to):
    """Ray Train's checkpoint upload path: pyarrow's S3 filesystem (its own retries) copying a folder."""
    src = tmp_path / "checkpoint_000001"
    (src / "sub").mkdir(parents=True)
    files = {"model.pt": 6 << 20, "optimizer.pt": 40_000, "sub/extra_state.json": 300, ".metadata.json": 50}
    for i, (name, size) in enumerate(files.items()):  # model.pt: over 5 MiB, a multipart upload
        (src / name).write_bytes(np.random.default_rng(i).bytes(size))
    proxy = proxy_to(share=0.3, kinds=FAILING_KINDS, stall_s=STALL_S)  # cut by request_timeout
    fs, path = storage.pyarrow_filesystem(f"s3://{s3_bucket}/ckpt", endpoint_url=proxy.url)
    pafs.copy_files(str(src), f"{path}/checkpoint_000001", source_filesystem=pafs.LocalFileSystem(),
                    destination_filesystem=fs)
    raw = boto3.client("s3")  # an independent reader, straight to moto
    for name in files:
        key = f"ckpt/checkpoint_000001/{name}"
        assert raw.get_object(Bucket=s3_bucket, Key=key)["Body"].read() == (src / name).read_bytes(), name
    print("checkpoint upload faults:", proxy.injected(), "requests:", proxy.counts["requests"])
    assert set(proxy.injected()) == set(FAILING_KINDS)


def test_pyarrow_gives_up_on_a_stalled_store_after_its_attempts_and_timeouts(s3_bucket, proxy_to, monkeypatch):
    """pyarrow_filesystem hands pyarrow our attempts and read timeout (its own default: 3 attempts, 3 s)."""
    monkeypatch.setattr(s3, "MAX_ATTEMPTS", 2)
    monkeypatch.setattr(s3, "READ_TIMEOUT_S", 1.0)
    proxy = proxy_to(share=1.0, kinds=["stall"], stall_s=10.0)
    fs, path = storage.pyarrow_filesystem(f"s3://{s3_bucket}/x.bin", endpoint_url=proxy.url)
    start = time.monotonic()
    with pytest.raises(OSError, match="Timeout"):
        fs.get_file_info(path)
    took = time.monotonic() - start
    assert proxy.injected() == {"stall": 2} and 2.0 <= took < 3.0, took  # 2 x 1 s, not 3 x 3 s
