"""nlray.data.storage against real endpoints: the moto S3 server, an auth-enforcing moto server,
a tiny HTTP server that throttles, and the local filesystem."""
from __future__ import annotations

import json
import os
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import boto3
import pyarrow.parquet as pq
import pyarrow as pa
import pytest

from nlray.testing.servers import start_moto, stop
from nlray.data import storage
from nlray.data.storage import s3, s3_client
from nlray.data.storage import MissingObjectError, StorageError


def test_s3_round_trip_and_listing(s3_bucket):
    root = f"s3://{s3_bucket}/root"
    storage.write_bytes(storage.join(root, "train", "a", "x.mp4"), b"abc")
    storage.write_bytes(storage.join(root, "train", "y.MP4"), b"12345")
    storage.write_bytes(storage.join(root, "annotations", "train.csv"), b"label\n")
    storage.write_bytes(f"s3://{s3_bucket}/root2/z.mp4", b"z")  # shares the prefix "root"
    # An independent reader: boto3 straight on the endpoint.
    raw = boto3.client("s3").get_object(Bucket=s3_bucket, Key="root/train/a/x.mp4")["Body"].read()
    assert raw == b"abc" == storage.read_bytes(f"{root}/train/a/x.mp4")
    assert storage.list_files(root) == [(f"{root}/train/a/x.mp4", 3), (f"{root}/train/y.MP4", 5)]
    assert len(storage.list_files(root, suffixes=None)) == 3
    assert storage.exists(f"{root}/train/y.MP4") and not storage.exists(f"{root}/nope.mp4")
    storage.check_access(root)


def test_s3_listing_paginates(s3_bucket, monkeypatch):
    monkeypatch.setattr(s3, "LIST_PAGE_SIZE", 3)  # S3 pages hold 1000 keys: shrink the page
    keys = [f"many/{i:04d}.mp4" for i in range(10)]
    client = boto3.client("s3")
    for k in keys:
        client.put_object(Bucket=s3_bucket, Key=k, Body=b"")
    listed = storage.list_files(f"s3://{s3_bucket}/many")
    assert [u for u, _ in listed] == [f"s3://{s3_bucket}/{k}" for k in keys]


def test_missing_object_and_missing_bucket(s3_bucket):
    with pytest.raises(MissingObjectError, match="nope.mp4"):
        storage.read_bytes(f"s3://{s3_bucket}/nope.mp4")
    for call in (lambda u: storage.read_bytes(u), lambda u: storage.check_access(u),
                 lambda u: storage.exists(u), lambda u: storage.list_files(u)):
        with pytest.raises(StorageError, match="no-such-bucket-xyz.*bucket does not exist") as info:
            call("s3://no-such-bucket-xyz/a.mp4")
        assert not isinstance(info.value, MissingObjectError)


def test_pyarrow_filesystem_reads_what_boto3_wrote(s3_bucket, monkeypatch, s3_endpoint):
    table = pa.table({"uri": ["s3://x/1.mp4", "s3://x/2.mp4"], "label_id": [3, 4]})
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    storage.write_bytes(f"s3://{s3_bucket}/m/manifest.parquet", sink.getvalue().to_pybytes())
    # pyarrow ignores AWS_ENDPOINT_URL: it works only because the endpoint is resolved for it.
    fs, path = storage.pyarrow_filesystem(f"s3://{s3_bucket}/m/manifest.parquet")
    assert path == f"{s3_bucket}/m/manifest.parquet"
    assert pq.read_table(path, filesystem=fs).equals(table)
    # The explicit endpoint argument wins over the environment.
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    fs, path = storage.pyarrow_filesystem(f"s3://{s3_bucket}/m", endpoint_url=s3_endpoint)
    with fs.open_input_file(path + "/manifest.parquet") as f:
        assert f.read() == sink.getvalue().to_pybytes()


def test_local_and_file_uris(tmp_path):
    plain = str(tmp_path / "d" / "v.mp4")
    old_umask = os.umask(0o027)
    try:
        storage.write_bytes(plain, b"hello")
    finally:
        os.umask(old_umask)
    assert (tmp_path / "d" / "v.mp4").read_bytes() == b"hello"
    assert (tmp_path / "d" / "v.mp4").stat().st_mode & 0o777 == 0o640  # the umask, not mkstemp's 0600
    assert storage.read_bytes(f"file://{plain}") == b"hello"
    assert storage.list_files(f"file://{tmp_path}") == [(f"file://{tmp_path}/d/v.mp4", 5)]
    assert storage.list_files(str(tmp_path)) == [(plain, 5)]
    assert storage.exists(plain) and not storage.exists(str(tmp_path / "no.mp4"))
    with pytest.raises(MissingObjectError, match="no.mp4"):
        storage.read_bytes(str(tmp_path / "no.mp4"))
    with pytest.raises(MissingObjectError):
        storage.check_access(str(tmp_path / "absent"))
    fs, path = storage.pyarrow_filesystem(f"file://{plain}")
    assert path == plain and fs.open_input_file(path).read() == b"hello"
    assert storage.join("s3://b/p/", "train", "/x.mp4") == "s3://b/p/train/x.mp4"
    assert storage.join(str(tmp_path), "a") == f"{tmp_path}/a"


@pytest.mark.parametrize("bad", ["", "s3:/x", "s3://", "s3:///key", "gs://b/x", "file://host/x",
                                 "http://h/x"])
def test_bad_uris_name_the_value_and_forms(bad):
    with pytest.raises(ValueError, match="s3://bucket") as info:
        storage.read_bytes(bad)
    assert repr(bad) in str(info.value)


# ----------------------------------------------------------------------------- credentials

POLICY = json.dumps({"Version": "2012-10-17",
                     "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]})


@pytest.fixture(scope="module")
def auth_s3(tmp_path_factory):
    """A second moto_server that checks signatures against its IAM users (moto's reset-auth API).

    Yields (url, bucket, good key pair, key pair of a user with no policy).
    """
    proc, url = start_moto(tmp_path_factory.mktemp("auth-moto") / "moto.log")
    try:
        kw = dict(endpoint_url=url, aws_access_key_id="setup", aws_secret_access_key="setup",
                  region_name="us-east-1")
        iam = boto3.client("iam", **kw)
        keys = []
        for user, policy in (("reader", True), ("nobody", False)):
            iam.create_user(UserName=user)
            k = iam.create_access_key(UserName=user)["AccessKey"]
            if policy:
                iam.put_user_policy(UserName=user, PolicyName="s3", PolicyDocument=POLICY)
            keys.append((k["AccessKeyId"], k["SecretAccessKey"]))
        boto3.client("s3", **kw).create_bucket(Bucket="secure")
        boto3.client("s3", **kw).put_object(Bucket="secure", Key="v.mp4", Body=b"data")
        # From now on every request must be signed by a known IAM user.
        req = urllib.request.Request(url + "/moto-api/reset-auth", data=b"0", method="POST",
                                     headers={"Content-Type": "text/plain"})
        urllib.request.urlopen(req).read()
        yield url, "secure", keys[0], keys[1]
    finally:
        stop(proc)


@pytest.mark.parametrize("case", ["wrong_key", "wrong_secret", "no_permission"])
def test_auth_errors_fail_at_once_with_a_clear_message(auth_s3, monkeypatch, case):
    url, bucket, good, nobody = auth_s3
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", good[0])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", good[1])
    assert storage.read_bytes(f"s3://{bucket}/v.mp4", endpoint_url=url) == b"data"
    key, secret = {"wrong_key": ("AKIAWRONGWRONGWRONG1", good[1]),
                   "wrong_secret": (good[0], "not-the-secret"), "no_permission": nobody}[case]
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    expected = {"wrong_key": "InvalidAccessKeyId", "wrong_secret": "SignatureDoesNotMatch",
                "no_permission": "AccessDenied"}[case]
    for call in (storage.read_bytes, storage.check_access, storage.list_files):
        with pytest.raises(StorageError, match=f"s3://{bucket}/v.mp4: access denied \\({expected}"):
            call(f"s3://{bucket}/v.mp4", endpoint_url=url)
    fs, path = storage.pyarrow_filesystem(f"s3://{bucket}/v.mp4", endpoint_url=url)
    with pytest.raises(OSError):  # pyarrow signs with the same (wrong) credentials
        fs.open_input_file(path).read()


# -------------------------------------------------------------------------------- retries


class _Scripted(BaseHTTPRequestHandler):
    """Answers each request with the next (status, S3 error code) of the server's script."""

    def do_GET(self):  # noqa: N802 (http.server's naming)
        server = self.server
        with server.lock:
            server.requests += 1
            status, code = server.script[min(server.requests, len(server.script)) - 1]
        body = (b"payload" if status == 200 else
                f"<Error><Code>{code}</Code><Message>scripted</Message></Error>".encode())
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def scripted_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Scripted)
    server.lock, server.requests, server.script = threading.Lock(), 0, []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join()


@pytest.mark.parametrize("script,requests,outcome", [
    ([(503, "SlowDown"), (500, "InternalError"), (200, "")], 3, "ok"),
    ([(400, "ThrottlingException"), (200, "")], 2, "ok"),
    ([(503, "SlowDown")], s3_client.MAX_ATTEMPTS, "gave up after"),
    ([(403, "AccessDenied"), (200, "")], 1, "access denied"),
    ([(404, "NoSuchBucket"), (200, "")], 1, "bucket does not exist"),
    ([(404, "NoSuchKey"), (200, "")], 1, "no such object"),
])
def test_throttling_retried_auth_and_missing_not(scripted_server, monkeypatch, script, requests,
                                                 outcome):
    monkeypatch.setattr(s3_client, "BACKOFF_BASE_S", 0.001)  # keep the backoff, shrink its scale
    scripted_server.script = script
    url = f"http://127.0.0.1:{scripted_server.server_port}"
    if outcome == "ok":
        assert storage.read_bytes("s3://bkt/k.mp4", endpoint_url=url) == b"payload"
    else:
        with pytest.raises(StorageError, match=outcome):
            storage.read_bytes("s3://bkt/k.mp4", endpoint_url=url)
    assert scripted_server.requests == requests
