"""Secrets (AWS keys, session tokens, MLflow and Ray credentials, user:password@ in URIs) never reach an MLflow
run's params, tags or artifacts, nor error messages, against a real `mlflow server` and a moto S3 endpoint."""
from __future__ import annotations

import os
import traceback
from pathlib import Path
from urllib.parse import quote

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from nlray import tracking
from nlray.config import ConfigError, from_yaml, load_config
from nlray.data import storage
from nlray.data.storage import s3_client
from nlray.raycluster import node_local_settings
from nlray.secrets import redact
from nlray.train.cli import parse

ENV_SECRETS = {  # shaped like the real ones: an access key id, a 40-character secret with / and +, ...
    "AWS_ACCESS_KEY_ID": "AKIAFAKEACCESSKEY123",
    "AWS_SECRET_ACCESS_KEY": "fAkEsEcReT/aCcEsS+kEy0123456789abcdefghi",
    "AWS_SESSION_TOKEN": "FQoGZXIvYXdzEFakeSessionToken//0123456789==",
    "MLFLOW_TRACKING_PASSWORD": "trackingPassw0rd-fake",
    "MLFLOW_TRACKING_TOKEN": "mlflowBearerToken-fake-0123",
    "RAY_AUTH_TOKEN": "0123456789abcdef0123456789abcdef-fake",
}
URI_USER, URI_PASSWORD = "AKIAUSERINFO00000000", "userinfoPassw0rd-in-a-uri"  # only ever inside URIs


def every_form(secret: str) -> list[str]:
    return [secret, quote(secret, safe="")]


ALL_SECRETS = [form for s in [*ENV_SECRETS.values(), URI_USER, URI_PASSWORD] for form in every_form(s)]


def leaks(text: str) -> list[str]:
    return [s for s in ALL_SECRETS if s in text]


@pytest.fixture
def secret_env(monkeypatch):
    for var, value in ENV_SECRETS.items():
        monkeypatch.setenv(var, value)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "nlray")  # basic auth: the server has none and ignores it


def test_redact_hides_userinfo_and_secret_env_values_and_nothing_else(secret_env):
    key = ENV_SECRETS["AWS_SECRET_ACCESS_KEY"]
    cases = {
        "http://user:pw@head:5000/api?a=b@c": "http://***@head:5000/api?a=b@c",
        "'https://u:p@ss@h:1/x' and mail@example.com": "'https://***@h:1/x' and mail@example.com",
        "postgresql://mlflow:pw@db:5432/mlflow": "postgresql://***@db:5432/mlflow",
        f"secret={key} quoted={quote(key, safe='')}": "secret=*** quoted=***",
        "s3://bucket/a@b/key.mp4 http://127.0.0.1:5000 sqlite:///m.db": "s3://bucket/a@b/key.mp4 http://127.0.0.1:5000 "
                                                                          "sqlite:///m.db",
    }
    for text, expected in cases.items():
        assert redact(text) == expected


def test_short_environment_values_are_not_treated_as_secrets(monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")  # moto's fake key: too common a word to mask
    assert redact("testing the loader") == "testing the loader"


def test_no_secret_reaches_mlflow_params_tags_or_artifacts(secret_env, mlflow_server, tmp_path, monkeypatch):
    host = mlflow_server.removeprefix("http://")
    uri = f"http://{URI_USER}:{URI_PASSWORD}@{host}"  # userinfo in the tracking URI: moved to the environment
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # where a URI with a password may be given
    token = ENV_SECRETS["AWS_SESSION_TOKEN"]
    cfg = load_config("demo", [
        "name=secrets", "tracking.experiment=t-secrets",
        f"train.init_from=s3://b/ckpt?X-Amz-Security-Token={quote(token, safe='')}"])
    assert cfg.tracking.uri == mlflow_server  # the config tree holds no credential
    assert os.environ["MLFLOW_TRACKING_USERNAME"] == URI_USER and os.environ["MLFLOW_TRACKING_PASSWORD"] == URI_PASSWORD
    run, resumed = tracking.start_or_resume_run(cfg, ["a", ENV_SECRETS["AWS_ACCESS_KEY_ID"]],
                                                {"endpoint": f"https://{URI_USER}:{URI_PASSWORD}@minio:9000"})
    assert not resumed and run.uri == mlflow_server
    run.log_text(f"failed at {uri} with {ENV_SECRETS['MLFLOW_TRACKING_PASSWORD']}\n", "notes/error.txt")
    run.set_tags({"nlray.failure": f"StorageError: http://{URI_USER}:{URI_PASSWORD}@h/b: denied "
                                   f"({ENV_SECRETS['MLFLOW_TRACKING_TOKEN']})"})
    folder = tmp_path / "checkpoint"
    folder.mkdir()
    (folder / "config.yaml").write_text(f"tracking: {{uri: '{uri}'}}\n")
    (folder / "model.pt").write_bytes(b"\x80\x02binary\xff")  # not UTF-8: uploaded untouched
    run.log_dir(folder, "checkpoint")
    assert leaks(repr(run)) == [] and host in repr(run)

    got = MlflowClient(mlflow_server).get_run(run.id)
    for key, value in {**got.data.params, **got.data.tags, "run_name": got.info.run_name}.items():
        assert leaks(f"{key}={value}") == [], key
    assert got.data.params["tracking.uri"] == mlflow_server
    assert got.data.params["train.init_from"] == "s3://b/ckpt?X-Amz-Security-Token=***"
    assert got.data.tags["nlray.failure"] == "StorageError: http://***@h/b: denied (***)"

    local = Path(mlflow.artifacts.download_artifacts(run_id=run.id, dst_path=str(tmp_path / "dl"),
                                                     tracking_uri=mlflow_server))
    files = sorted(p for p in local.rglob("*") if p.is_file())
    assert {p.relative_to(local).as_posix() for p in files} == {
        "config.yaml", "labels.txt", "notes/error.txt", "checkpoint/config.yaml", "checkpoint/model.pt"}
    for path in files:
        data = path.read_bytes()
        assert [s for s in ALL_SECRETS if s.encode() in data] == [], path
    assert (local / "checkpoint" / "model.pt").read_bytes() == (folder / "model.pt").read_bytes()  # binaries as-is
    assert from_yaml((local / "config.yaml").read_text()).tracking.uri == mlflow_server


@pytest.mark.parametrize("key, value", [
    ("data.s3_endpoint_url", f"http://{URI_USER}:{URI_PASSWORD}@127.0.0.1:9"),
    ("cluster.address", f"ray://{URI_PASSWORD}@head:10001"),
])
def test_credentials_inside_an_endpoint_or_address_are_refused_without_echoing_them(secret_env, key, value):
    with pytest.raises(ConfigError, match="holds credentials") as err:
        load_config("demo", [f"{key}={value}"])
    assert key in str(err.value) and leaks(str(err.value)) == []


def test_storage_errors_name_the_uri_without_its_userinfo(secret_env, s3_endpoint, monkeypatch):
    port = s3_endpoint.rsplit(":", 1)[1]
    endpoint = f"http://{URI_USER}:{URI_PASSWORD}@127.0.0.1:{port}"  # moto answers: the endpoint works
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", endpoint)  # the 'bucket does not exist' message names it
    with pytest.raises(storage.StorageError) as err:
        storage.read_bytes("s3://no-such-bucket-secrets/key")
    assert "bucket does not exist" in str(err.value) and f"http://***@127.0.0.1:{port}" in str(err.value)
    unreachable = f"http://{URI_USER}:{URI_PASSWORD}@127.0.0.1:9"  # nothing listens: botocore quotes the URL
    with pytest.raises(storage.StorageError) as down:
        s3_client.call("s3://b/k", lambda: s3_client.client(unreachable).get_object(Bucket="b", Key="k"),
                       max_attempts=1)
    assert "127.0.0.1:9" in str(down.value)
    with pytest.raises(ValueError) as bad:
        storage.read_bytes(f"file://{URI_USER}:{URI_PASSWORD}@host/x")
    for e in (err.value, down.value, bad.value):
        assert leaks("".join(traceback.format_exception(e))) == []  # the message and its chained causes


def test_config_errors_and_cluster_path_problems_hide_userinfo(secret_env, capsys):
    userinfo = f"{URI_USER}:{URI_PASSWORD}@"
    with pytest.raises(ConfigError) as err:
        load_config("demo", [f"data.s3_endpoint_url=[http://{userinfo}h]"])
    assert "data.s3_endpoint_url" in str(err.value) and leaks(str(err.value)) == []
    with pytest.raises(SystemExit) as exit_:
        parse("train", "demo", [f"tracking.uri=http://{userinfo}h:5000", "train.base_lr=-1"])
    assert exit_.value.code == 2 and leaks(capsys.readouterr().err) == []
    for key in ("data.root", "train.storage_path"):  # no such scheme: refused at once, the userinfo hidden
        with pytest.raises(ConfigError, match="unsupported scheme") as bad:
            load_config("demo", [f"{key}=gs://{userinfo}b/k400"])
        assert leaks(str(bad.value)) == []
    with pytest.raises(ConfigError, match="MLFLOW_TRACKING_PASSWORD") as on_cli:
        load_config("demo", [f"tracking.uri=http://{userinfo}h:5000"])
    assert leaks(str(on_cli.value)) == []
    cfg = load_config("demo", ["tracking.uri=file://nfs/mlruns", "data.root=/data/k400",
                               "train.storage_path=/results"])
    problems = node_local_settings(cfg)
    assert len(problems) == 3 and leaks("\n".join(problems)) == []
    assert "tracking.uri='file://nfs/mlruns'" in problems[1]
