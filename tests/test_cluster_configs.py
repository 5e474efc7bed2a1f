"""The cluster configurations, checked offline: cluster/aws.yaml against Ray 2.60's own launcher validation,
cluster/kuberay/*.yaml against KubeRay's v1 CRD schemas (tests/schemas/), and the facts they must share with
each other and with pyproject.toml (versions, custom resources, env defaults, token auth, no secrets).
"""
from __future__ import annotations

import copy
import gzip
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml
from packaging.specifiers import SpecifierSet

try:
    import tomllib
except ImportError:  # Python 3.10
    from pip._vendor import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"
KUBE = CLUSTER / "kuberay"
SCHEMAS = Path(__file__).parent / "schemas"

RAY_VERSION = "2.60.0"
PY_TAG = "py311"
CUSTOM = {"train": "nlray_train", "decode": "nlray_decode"}
BUILTIN = {"CPU", "GPU", "memory", "object_store_memory"}
ENV_DEFAULTS = ("NLRAY_STORAGE", "NLRAY_DATA", "MLFLOW_TRACKING_URI")


def load(path: Path):
    return yaml.safe_load(path.read_text())


def load_all(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


@pytest.fixture(scope="module")
def aws() -> dict:
    return load(CLUSTER / "aws.yaml")


@pytest.fixture(scope="module")
def raycluster() -> dict:
    return load(KUBE / "raycluster.yaml")


@pytest.fixture(scope="module")
def rayjob() -> dict:
    return load(KUBE / "rayjob.yaml")


@pytest.fixture(scope="module")
def local_autoscaling() -> dict:
    return load(CLUSTER / "local" / "autoscaling.yaml")


# ---------------------------------------------------------------- cluster/aws.yaml (Ray cluster launcher)

def test_aws_passes_ray_launcher_validation_offline(aws):
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(aws))
    validate_config(prepared)
    assert prepared["provider"]["type"] == "aws"
    assert set(prepared["available_node_types"]) == {"head", "gpu_8x", "gpu_8x_spot", "decode"}


def test_aws_spot_gpu_nodes_are_the_on_demand_ones_bought_on_the_spot_market(aws):
    types = aws["available_node_types"]
    spot, on_demand = copy.deepcopy(types["gpu_8x_spot"]), types["gpu_8x"]
    market = spot["node_config"].pop("InstanceMarketOptions")
    assert market["MarketType"] == "spot" and market["SpotOptions"]["InstanceInterruptionBehavior"] == "terminate"
    assert "InstanceMarketOptions" not in on_demand["node_config"]
    assert spot == on_demand  # same resources: the autoscaler may launch either for Ray Train's workers


def test_aws_node_types_declare_their_resources(aws):
    types = aws["available_node_types"]
    assert aws["head_node_type"] == "head"
    assert types["head"]["resources"] == {"CPU": 0}
    gpu, dec = types["gpu_8x"]["resources"], types["decode"]["resources"]
    # everything the autoscaler would otherwise fill in from the EC2 catalogue is declared
    assert {"CPU", "GPU", "memory", "nlray_train"} <= set(gpu) and gpu["nlray_train"] == gpu["GPU"] == 8
    assert {"CPU", "memory", "nlray_decode"} <= set(dec) and dec["nlray_decode"] == dec["CPU"]
    assert dec.get("GPU", 0) == 0 and "nlray_decode" not in gpu and "nlray_train" not in dec
    for t in types.values():
        assert t["node_config"]["InstanceType"]


def test_aws_every_node_type_has_an_iam_instance_profile_and_a_pinned_ami(aws):
    for name, t in aws["available_node_types"].items():
        arn = t["node_config"]["IamInstanceProfile"]["Arn"]
        assert re.fullmatch(r"arn:aws:iam::\d{12}:instance-profile/[\w+=,.@-]+", arn), name
        assert re.fullmatch(r"ami-[0-9a-f]{8,17}", t["node_config"]["ImageId"]), name


def _commands(cfg: dict, *keys: str) -> list[str]:
    return [c for k in keys for c in cfg.get(k) or []]


ALL_COMMAND_KEYS = ("initialization_commands", "setup_commands", "head_setup_commands",
                    "worker_setup_commands", "head_start_ray_commands", "worker_start_ray_commands")


def test_aws_commands_are_valid_bash(aws):
    for cmd in _commands(aws, *ALL_COMMAND_KEYS):
        done = subprocess.run(["bash", "-n", "-c", cmd], capture_output=True, text=True)
        assert done.returncode == 0, f"{cmd!r}: {done.stderr}"


def test_aws_token_auth_on_every_node(aws):
    # the token file travels with file_mounts (to the head, and from it to every worker) ...
    assert aws["file_mounts"].get("/home/ubuntu/.ray/auth_token") == "~/.ray/auth_token"
    # ... and every `ray start` runs with token auth on
    starts = [c for c in _commands(aws, "head_start_ray_commands", "worker_start_ray_commands")
              if "ray start" in c]
    assert len(starts) == 2
    for cmd in starts:
        assert re.search(r"RAY_AUTH_MODE=token\s+ray start", cmd), cmd
    for cmd in _commands(aws, *ALL_COMMAND_KEYS):
        assert "RAY_AUTH_MODE=disabled" not in cmd and "RAY_AUTH_TOKEN=" not in cmd, cmd


def test_aws_env_defaults_are_set_before_ray_start(aws):
    env_file = " ".join(c for c in aws["setup_commands"] if "nlray.env" in c)
    assert "export NLRAY_STORAGE=s3://" in env_file
    assert "export NLRAY_TRAIN_RESOURCE=nlray_train" in env_file
    assert "export NLRAY_DECODE_RESOURCE=nlray_decode" in env_file
    for key, uri in (("head_start_ray_commands", "http://$(hostname -I"),
                     ("worker_start_ray_commands", "http://$RAY_HEAD_IP:5000")):
        cmd = next(c for c in aws[key] if "ray start" in c)
        before = cmd[:cmd.index("ray start")]
        assert "source ~/nlray.env" in before and f"export MLFLOW_TRACKING_URI={uri}" in before, cmd


def test_aws_head_runs_mlflow_reachable_by_the_nodes(aws):
    from mlflow.server.security_utils import is_allowed_host_header

    cmd = next(c for c in aws["head_start_ray_commands"] if "mlflow server" in c)
    # the server command is the single-quoted script of `setsid nohup bash -c '...'`
    args = shlex.split(cmd[cmd.index("exec mlflow server"):].split("'")[0])

    def opt(name: str) -> str:
        return args[args.index(name) + 1]

    assert opt("--host") == "0.0.0.0" and opt("--port") == "5000"
    assert opt("--backend-store-uri").startswith("sqlite:////home/ubuntu/")
    assert opt("--artifacts-destination") == "$NLRAY_MLFLOW_ARTIFACTS"
    assert "'export NLRAY_MLFLOW_ARTIFACTS=s3://" in " ".join(aws["setup_commands"])
    allowed = opt("--allowed-hosts").replace("$HEAD_IP", "10.0.3.7").split(",")
    for host in ("10.0.3.7:5000", "localhost:5000", "127.0.0.1:5000"):  # nodes, and the SSH-forwarded UI
        assert is_allowed_host_header(allowed, host), host
    assert not is_allowed_host_header(allowed, "attacker.example:5000")


def test_aws_installs_the_project_at_pinned_versions_without_copying_local_state(aws):
    setup = " ".join(aws["setup_commands"])
    assert f'"ray[default,train,data]=={RAY_VERSION}"' in setup and "-e ~/nlray" in setup
    assert "--python 3.11" in setup
    assert aws["file_mounts"]["/home/ubuntu/nlray"] == "."
    assert {".venv", ".git", "**/__pycache__", ".pytest_cache"} <= set(aws["rsync_exclude"])
    assert ".gitignore" in aws["rsync_filter"]


# ---------------------------------------------------------------- KubeRay manifests

def strict(schema):
    """The CRD schema with unknown fields refused, as the API server's pruning would drop them silently."""
    if isinstance(schema, dict):
        out = {k: strict(v) for k, v in schema.items()}
        if ("properties" in out and "additionalProperties" not in out
                and not out.get("x-kubernetes-preserve-unknown-fields")):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [strict(v) for v in schema]
    return schema


@pytest.fixture(scope="module")
def validators() -> dict:
    out = {}
    for kind, name in (("RayCluster", "raycluster"), ("RayJob", "rayjob")):
        schema = json.loads(gzip.decompress((SCHEMAS / f"{name}.v1.json.gz").read_bytes()))
        out[kind] = jsonschema.Draft7Validator(strict(schema))
    return out


def assert_valid(validators, doc):
    errors = sorted(validators[doc["kind"]].iter_errors(doc), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors)


def test_kuberay_manifests_validate_against_the_v1_crds(validators, raycluster, rayjob):
    for doc in (raycluster, rayjob):
        assert doc["apiVersion"] == "ray.io/v1"
        assert_valid(validators, doc)


def test_strict_schema_catches_unknown_and_mistyped_fields(validators, raycluster):
    typo = copy.deepcopy(raycluster)
    typo["spec"]["headGroupSpec"]["rayStartParam"] = {}
    with pytest.raises(AssertionError, match="rayStartParam"):
        assert_valid(validators, typo)
    wrong = copy.deepcopy(raycluster)
    wrong["spec"]["workerGroupSpecs"][0]["maxReplicas"] = "4"
    with pytest.raises(AssertionError, match="maxReplicas"):
        assert_valid(validators, wrong)


def _resources_param(group: dict) -> dict:
    raw = group["rayStartParams"].get("resources")
    if raw is None:
        return {}
    # KubeRay passes it to the shell as --resources=<value>: '"{\"x\": 1}"'
    return json.loads(shlex.split(raw)[0])


def _worker_groups(spec: dict) -> dict[str, dict]:
    return {g["groupName"]: g for g in spec["workerGroupSpecs"]}


def _ray_containers(spec: dict) -> list[dict]:
    pods = [spec["headGroupSpec"]["template"]] + [g["template"] for g in spec["workerGroupSpecs"]]
    return [p["spec"]["containers"][0] for p in pods]


def test_raycluster_shape_matches_the_contract(raycluster):
    spec = raycluster["spec"]
    assert spec["enableInTreeAutoscaling"] is True
    assert spec["authOptions"]["mode"] == "token"
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    assert "resources" not in spec["headGroupSpec"]["rayStartParams"]
    groups = _worker_groups(spec)
    assert set(groups) == {"gpu-8x", "gpu-8x-spot", "decode"}
    spot = copy.deepcopy(groups["gpu-8x-spot"]["template"]["spec"])
    assert spot["nodeSelector"].pop("eks.amazonaws.com/capacityType") == "SPOT"  # EKS labels spot nodes so
    assert {"key": "spot", "operator": "Equal", "value": "true", "effect": "NoSchedule"} in spot["tolerations"]
    spot["tolerations"].remove({"key": "spot", "operator": "Equal", "value": "true", "effect": "NoSchedule"})
    assert spot == groups["gpu-8x"]["template"]["spec"]  # otherwise the on-demand group's pod
    gpu, dec = groups["gpu-8x"], groups["decode"]
    gpu_limits = gpu["template"]["spec"]["containers"][0]["resources"]["limits"]
    dec_limits = dec["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert _resources_param(gpu) == {"nlray_train": int(gpu_limits["nvidia.com/gpu"])}
    assert int(gpu["rayStartParams"]["num-gpus"]) == int(gpu_limits["nvidia.com/gpu"])
    assert _resources_param(dec) == {"nlray_decode": int(dec["rayStartParams"]["num-cpus"])}
    assert int(dec["rayStartParams"]["num-cpus"]) == int(dec_limits["cpu"])
    assert "nvidia.com/gpu" not in dec_limits
    for g in groups.values():
        assert g["minReplicas"] == 0 < g["maxReplicas"]


def test_every_ray_pod_gets_env_defaults_and_the_s3_service_account(raycluster):
    envs = []
    pods = [raycluster["spec"]["headGroupSpec"]["template"]] + [
        g["template"] for g in raycluster["spec"]["workerGroupSpecs"]]
    for pod in pods:
        assert pod["spec"]["serviceAccountName"] == "nlray-ray"
        env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0].get("env", [])}
        assert set(ENV_DEFAULTS) <= set(env)
        envs.append({k: env[k] for k in ENV_DEFAULTS})
    assert all(e == envs[0] for e in envs), "env defaults differ between Ray pods"
    assert envs[0]["NLRAY_STORAGE"].startswith("s3://")
    assert envs[0]["MLFLOW_TRACKING_URI"] == "http://nlray-mlflow:5000"


def test_rayjob_runs_the_long_clip_job_on_the_same_cluster_and_cleans_up(rayjob, raycluster):
    spec = rayjob["spec"]
    assert spec["entrypoint"] == "python jobs/train_longclip.py"
    assert spec["shutdownAfterJobFinishes"] is True
    assert spec["rayClusterSpec"] == raycluster["spec"]
    assert yaml.safe_load(spec["runtimeEnvYAML"])["working_dir"] == "/home/ray/nlray"
    sub = spec["submitterPodTemplate"]["spec"]["containers"][0]
    env = {e["name"]: e for e in sub["env"]}
    assert env["RAY_AUTH_MODE"]["value"] == "token"
    ref = env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": raycluster["spec"]["authOptions"]["secretName"], "key": "auth_token"}


def test_serviceaccount_deployment_and_service(raycluster):
    sas = {d["metadata"]["name"]: d for d in load_all(KUBE / "serviceaccount.yaml")}
    assert set(sas) == {"nlray-ray", "nlray-mlflow", "nlray-submitter"}
    for sa in sas.values():
        assert (sa["apiVersion"], sa["kind"]) == ("v1", "ServiceAccount")
    sa = sas["nlray-mlflow"]

    docs = {d["kind"]: d for d in load_all(KUBE / "mlflow.yaml")}
    assert set(docs) == {"PersistentVolumeClaim", "ConfigMap", "Deployment", "Service"}
    dep, svc = docs["Deployment"], docs["Service"]
    assert dep["apiVersion"] == "apps/v1" and svc["apiVersion"] == "v1"
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert dep["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert svc["spec"]["selector"].items() <= labels.items()
    assert svc["spec"].get("type", "ClusterIP") == "ClusterIP"  # the UI is reached by port-forward
    pod = dep["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == sa["metadata"]["name"]
    (c,) = pod["containers"]
    port_names = {p["name"]: p["containerPort"] for p in c["ports"]}
    (sp,) = svc["spec"]["ports"]
    assert sp["port"] == 5000 and port_names[sp["targetPort"]] == 5000
    assert {v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v} == {
        docs["PersistentVolumeClaim"]["metadata"]["name"]}

    args = dict(a.lstrip("-").split("=", 1) for a in c["args"])
    assert c["command"] == ["mlflow", "server"] and args["host"] == "0.0.0.0" and args["port"] == "5000"
    assert args["artifacts-destination"].startswith("s3://")
    assert args["backend-store-uri"].startswith("sqlite:////mlflow/")

    # MLflow 3 checks the Host header: the name the Ray pods use, its FQDN and the port-forward all pass
    from mlflow.server.security_utils import is_allowed_host_header

    uri_host = raycluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["env"]
    host = next(e["value"] for e in uri_host if e["name"] == "MLFLOW_TRACKING_URI").split("//")[1]
    assert host.split(":")[0] == svc["metadata"]["name"]
    allowed = args["allowed-hosts"].split(",")
    for h in (host, f"{svc['metadata']['name']}.nlray.svc.cluster.local:5000", "localhost:5000"):
        assert is_allowed_host_header(allowed, h), h


# ---------------------------------------------------------------- what the configurations share

def test_ray_and_python_versions_agree_everywhere(aws, raycluster, rayjob):
    import ray

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    ray_req = next(d for d in project["dependencies"] if d.startswith("ray["))
    assert RAY_VERSION in SpecifierSet(ray_req.split("]", 1)[1]) and ray.__version__ in SpecifierSet(
        ray_req.split("]", 1)[1])
    assert "3.11" in SpecifierSet(project["requires-python"])
    assert ray_req.startswith("ray[default,train,data]")

    setup = " ".join(aws["setup_commands"])
    assert f"ray[default,train,data]=={RAY_VERSION}" in setup and "--python 3.11" in setup

    docker = (KUBE / "Dockerfile").read_text()
    base = re.search(r"^ARG RAY_IMAGE=(\S+)$", docker, re.M).group(1)
    assert base == f"rayproject/ray:{RAY_VERSION}-{PY_TAG}-gpu"
    assert re.search(r"^FROM \$\{RAY_IMAGE\}@", docker, re.M)  # pinned by digest, test_dockerfile_...
    # ray stays the base image's, checked at build time; the project goes in without resolving anything
    assert f"assert ray.__version__ == '{RAY_VERSION}'" in docker
    assert re.search(r"^RUN pip install --no-cache-dir --no-deps --no-build-isolation \. ", docker, re.M)
    assert f"rayproject/ray:{RAY_VERSION}-{PY_TAG}-cpu" in docker  # the documented cpu variant

    images = [c["image"] for c in _ray_containers(raycluster["spec"])]
    images += [c["image"] for c in rayjob["spec"]["submitterPodTemplate"]["spec"]["containers"]]
    images += [c["image"] for d in load_all(KUBE / "mlflow.yaml") if d["kind"] == "Deployment"
               for c in d["spec"]["template"]["spec"]["containers"]]
    for image in images:
        assert image.endswith((f"-ray{RAY_VERSION}-{PY_TAG}-gpu", f"-ray{RAY_VERSION}-{PY_TAG}-cpu")), image
    gpu_group = _worker_groups(raycluster["spec"])["gpu-8x"]
    assert gpu_group["template"]["spec"]["containers"][0]["image"].endswith("-gpu")
    for doc in (raycluster["spec"], rayjob["spec"]["rayClusterSpec"]):
        assert doc["rayVersion"] == RAY_VERSION


def test_custom_resource_names_agree(aws, raycluster, local_autoscaling):
    def custom(resources: dict) -> set[str]:
        return set(resources) - BUILTIN

    aws_types = aws["available_node_types"]
    groups = _worker_groups(raycluster["spec"])
    local_types = local_autoscaling["available_node_types"]
    by_role = {
        "aws": {"head": custom(aws_types["head"]["resources"]),
                "train": custom(aws_types["gpu_8x"]["resources"]),
                "decode": custom(aws_types["decode"]["resources"])},
        "kuberay": {"head": set(),
                    "train": set(_resources_param(groups["gpu-8x"])),
                    "decode": set(_resources_param(groups["decode"]))},
        "local": {"head": custom(local_types[local_autoscaling["head_node_type"]]["resources"]),
                  "train": custom(local_types["train"]["resources"]),
                  "decode": custom(local_types["decode"]["resources"])},
    }
    for where, roles in by_role.items():
        assert roles == {"head": set(), "train": {CUSTOM["train"]}, "decode": {CUSTOM["decode"]}}, where
    # a decode node offers one decoder slot per CPU, everywhere
    assert local_types["decode"]["resources"]["nlray_decode"] == local_types["decode"]["resources"]["CPU"]


def test_local_autoscaling_config_is_complete(local_autoscaling):
    from ray.autoscaler._private.util import validate_config

    validate_config(copy.deepcopy(local_autoscaling))  # the launcher's schema; no defaults exist to merge
    cfg = local_autoscaling
    for key in ("cluster_name", "max_workers", "upscaling_speed", "idle_timeout_minutes", "provider",
                "available_node_types", "head_node_type", "auth", "docker", "initialization_commands",
                "setup_commands", "head_setup_commands", "worker_setup_commands",
                "head_start_ray_commands", "worker_start_ray_commands", "file_mounts",
                "cluster_synced_files", "file_mounts_sync_continuously", "rsync_exclude", "rsync_filter"):
        assert key in cfg, key
    assert cfg["provider"] == {"type": "fake_multinode", "use_node_id_as_ip": True,
                               "disable_node_updaters": True, "disable_launch_config_check": True}
    assert cfg["idle_timeout_minutes"] == 1
    # the fake provider tags its head "ray.head.default"; another name makes it launch phantom heads
    assert cfg["head_node_type"] == "ray.head.default"
    head = cfg["available_node_types"]["ray.head.default"]
    assert head["resources"] == {"CPU": 0} and head["max_workers"] == 0
    assert cfg["available_node_types"]["train"]["resources"] == {"CPU": 2, "nlray_train": 1}
    assert cfg["available_node_types"]["decode"]["resources"] == {"CPU": 2, "nlray_decode": 2}
    for name in ("train", "decode"):
        t = cfg["available_node_types"][name]
        assert t["min_workers"] == 0 < t["max_workers"] <= cfg["max_workers"] and t["node_config"] == {}


# ---------------------------------------------------------------- hardening (issue 18, finding 5)

RAY_UID = 1000  # the ray user of the rayproject/ray images (cluster/kuberay/Dockerfile runs as it)
MLFLOW_SECRET = "nlray-mlflow-auth"
HARDENED = {"allowPrivilegeEscalation": False, "runAsNonRoot": True, "runAsUser": RAY_UID,
            "seccompProfile": {"type": "RuntimeDefault"}}


def _pod_specs() -> dict[str, dict]:
    """Every pod template of cluster/kuberay/*.yaml, by where it is."""
    out = {}
    for path in sorted(KUBE.glob("*.yaml")):
        for doc in load_all(path):
            spec, kind = doc.get("spec", {}), doc["kind"]
            if kind == "Deployment":
                out[f"{path.name}:Deployment"] = spec["template"]["spec"]
            for name, cluster in (("RayCluster", spec), ("RayJob", spec.get("rayClusterSpec"))):
                if kind in ("RayCluster", "RayJob") and cluster and "headGroupSpec" in cluster:
                    out[f"{path.name}:{name}:head"] = cluster["headGroupSpec"]["template"]["spec"]
                    for g in cluster["workerGroupSpecs"]:
                        out[f"{path.name}:{name}:{g['groupName']}"] = g["template"]["spec"]
            if kind == "RayJob":
                out[f"{path.name}:submitter"] = spec["submitterPodTemplate"]["spec"]
    return out


def _ray_cluster_specs(raycluster, rayjob) -> list[dict]:
    return [raycluster["spec"], rayjob["spec"]["rayClusterSpec"]]


def test_every_container_runs_non_root_without_privileges(raycluster, rayjob):
    pods = _pod_specs()
    assert len(pods) == 10  # mlflow, 2 x (head, gpu-8x, gpu-8x-spot, decode), the submitter
    containers = {f"{where}/{c['name']}": (pod, c) for where, pod in pods.items()
                  for c in pod["containers"] + pod.get("initContainers", [])}
    # KubeRay's autoscaler sidecar gets autoscalerOptions.securityContext
    for i, cluster in enumerate(_ray_cluster_specs(raycluster, rayjob)):
        containers[f"autoscaler[{i}]"] = ({}, {"securityContext": cluster["autoscalerOptions"]["securityContext"]})
    for where, (pod, c) in containers.items():
        sc = c.get("securityContext") or {}
        assert {k: sc.get(k) for k in HARDENED} == HARDENED, where
        assert sc["capabilities"] == {"drop": ["ALL"]}, where
        assert not sc.get("privileged"), where
        pod_sc = pod.get("securityContext")
        if pod_sc is not None:  # the pod level agrees (and covers anything injected later)
            assert pod_sc["runAsNonRoot"] is True and pod_sc["runAsUser"] == RAY_UID, where
            assert pod_sc["seccompProfile"] == {"type": "RuntimeDefault"}, where
    assert all(p.get("securityContext") for p in pods.values())


def test_no_pod_auto_mounts_a_kubernetes_token_and_each_component_has_its_role(raycluster, rayjob):
    sas = {d["metadata"]["name"]: d for d in load_all(KUBE / "serviceaccount.yaml")}
    for name, sa in sas.items():
        assert sa["automountServiceAccountToken"] is False, name
    roles = {n: sa["metadata"].get("annotations", {}).get("eks.amazonaws.com/role-arn") for n, sa in sas.items()}
    assert roles["nlray-submitter"] is None                          # no AWS access at all
    assert roles["nlray-ray"] and roles["nlray-mlflow"] and roles["nlray-ray"] != roles["nlray-mlflow"]
    for arn in (roles["nlray-ray"], roles["nlray-mlflow"]):
        assert re.fullmatch(r"arn:aws:iam::\d{12}:role/[\w+=,.@-]+", arn)
    expected_sa = {"Deployment": "nlray-mlflow", "submitter": "nlray-submitter"}
    for where, pod in _pod_specs().items():
        assert pod["automountServiceAccountToken"] is False, where
        sa = next((v for k, v in expected_sa.items() if where.endswith(k)), "nlray-ray")
        assert pod["serviceAccountName"] == sa, where
        assert sa in sas, where
    # the one Kubernetes API client, KubeRay's autoscaler, gets the token projected into its container only
    token_path = "/var/run/secrets/kubernetes.io/serviceaccount"
    for cluster in _ray_cluster_specs(raycluster, rayjob):
        (mount,) = cluster["autoscalerOptions"]["volumeMounts"]
        assert mount["mountPath"] == token_path and mount["readOnly"] is True
        head = cluster["headGroupSpec"]["template"]["spec"]
        vol = next(v for v in head["volumes"] if v["name"] == mount["name"])
        sources = vol["projected"]["sources"]
        assert {"path": "token", "expirationSeconds": 3607} == sources[0]["serviceAccountToken"]
        assert sources[1]["configMap"]["name"] == "kube-root-ca.crt"
        for pod in [head] + [g["template"]["spec"] for g in cluster["workerGroupSpecs"]]:
            for c in pod["containers"]:
                assert all(m["name"] != mount["name"] for m in c.get("volumeMounts", [])), c["name"]


def _mlflow_deployment() -> dict:
    return next(d for d in load_all(KUBE / "mlflow.yaml") if d["kind"] == "Deployment")


def _secret_ref(env: dict) -> tuple[str, str]:
    assert "value" not in env, env["name"]
    ref = env["valueFrom"]["secretKeyRef"]
    return ref["name"], ref["key"]


def _mlflow_auth_module(name: str):
    """mlflow.server.auth.<name> loaded from its file: the package's __init__ needs Flask-WTF (mlflow[auth]),
    which the image installs (requirements.lock) but the project's environment does not."""
    import importlib.util

    import mlflow

    path = Path(mlflow.__file__).parent / "server" / "auth" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"_nlray_test_mlflow_auth_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_mlflow_server_runs_basic_auth_with_the_admin_from_a_secret(tmp_path, monkeypatch):
    read_auth_config = _mlflow_auth_module("config").read_auth_config
    get_permission = _mlflow_auth_module("permissions").get_permission

    pod = _mlflow_deployment()["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["command"] == ["mlflow", "server"] and "--app-name=basic-auth" in c["args"]
    env = {e["name"]: e for e in c["env"]}
    assert _secret_ref(env["MLFLOW_AUTH_ADMIN_USERNAME"]) == (MLFLOW_SECRET, "username")
    assert _secret_ref(env["MLFLOW_AUTH_ADMIN_PASSWORD"]) == (MLFLOW_SECRET, "password")
    assert _secret_ref(env["MLFLOW_FLASK_SERVER_SECRET_KEY"]) == (MLFLOW_SECRET, "flask_secret_key")
    # the auth config file is the ConfigMap, mounted where MLFLOW_AUTH_CONFIG_PATH points; no password in it
    config_path = Path(env["MLFLOW_AUTH_CONFIG_PATH"]["value"])
    mount = next(m for m in c["volumeMounts"] if config_path.parent == Path(m["mountPath"]))
    vol = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    cm = next(d for d in load_all(KUBE / "mlflow.yaml")
              if d["kind"] == "ConfigMap" and d["metadata"]["name"] == vol["configMap"]["name"])
    ini = cm["data"][config_path.name]
    assert "admin_password" not in ini
    # MLflow reads it as the server will: the admin from the env, the user store on the volume
    (tmp_path / config_path.name).write_text(ini)
    monkeypatch.setenv("MLFLOW_AUTH_CONFIG_PATH", str(tmp_path / config_path.name))
    monkeypatch.setenv("MLFLOW_AUTH_ADMIN_USERNAME", "nlray-admin")
    monkeypatch.setenv("MLFLOW_AUTH_ADMIN_PASSWORD", "from-the-secret")
    cfg = read_auth_config()
    assert (cfg.admin_username, cfg.admin_password) == ("nlray-admin", "from-the-secret")
    assert get_permission(cfg.default_permission).name == "NO_PERMISSIONS"
    store = next(m["mountPath"] for m in c["volumeMounts"] if m["name"] == "store")
    assert cfg.database_uri == f"sqlite:///{store}/basic_auth.db"
    assert cfg.authorization_function == "mlflow.server.auth:authenticate_request_basic_auth"


def test_every_ray_container_presents_mlflow_credentials_from_the_secret(raycluster, rayjob):
    for cluster in _ray_cluster_specs(raycluster, rayjob):
        for c in _ray_containers(cluster):
            env = {e["name"]: e for e in c["env"]}
            assert _secret_ref(env["MLFLOW_TRACKING_USERNAME"]) == (MLFLOW_SECRET, "username"), c["name"]
            assert _secret_ref(env["MLFLOW_TRACKING_PASSWORD"]) == (MLFLOW_SECRET, "password"), c["name"]


USERINFO = re.compile(r"\b[a-z][a-z0-9+.-]*://[^/\s'\"@]*@", re.I)


def test_no_uri_in_the_cluster_files_carries_credentials():
    assert USERINFO.search("http://alice:s3cr3t@nlray-mlflow:5000") and USERINFO.search("s3://k:s@minio:9000/b")
    assert not USERINFO.search("http://nlray-mlflow:5000/#/experiments?x=a@b")
    for path in [CLUSTER / "aws.yaml", *sorted(KUBE.glob("*.yaml"))]:
        for n, line in enumerate(path.read_text().splitlines(), 1):
            assert not USERINFO.search(line), f"{path.name}:{n}: {line}"


def test_dockerfile_pins_the_base_by_digest_and_installs_from_the_lock():
    docker = (KUBE / "Dockerfile").read_text()
    (from_line,) = re.findall(r"^FROM .*$", docker, re.M)
    digest = re.fullmatch(r"FROM \S+@(\S+)", from_line).group(1)
    if not digest.startswith("sha256:"):
        # a required build arg: no default anywhere, and the build stops when it is missing
        arg = re.fullmatch(r"\$\{(\w+):\?\S+\}", digest)
        assert arg, from_line
        assert re.search(rf"^ARG {arg.group(1)}$", docker, re.M), "the digest arg must have no default"
    else:
        assert re.fullmatch(r"sha256:[0-9a-f]{64}", digest)
    assert re.search(r"^RUN pip install --no-cache-dir --no-deps -r requirements\.lock", docker, re.M)
    assert "COPY --chown=ray:users cluster/kuberay/requirements.lock ./requirements.lock" in docker
    assert re.search(r"^USER 1000$", docker, re.M)
    assert not re.search(r"pip install(?!.*--no-deps)", docker)  # nothing resolved at build time


def test_requirements_lock_pins_every_runtime_dependency_exactly():
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    lines = [ln.strip() for ln in (KUBE / "requirements.lock").read_text().splitlines()]
    reqs = [Requirement(ln) for ln in lines if ln and not ln.startswith("#")]
    pins = {}
    for r in reqs:
        (spec,) = r.specifier  # one specifier, and it is ==
        assert spec.operator == "==" and "*" not in spec.version and not r.marker and not r.url, str(r)
        name = canonicalize_name(r.name)
        assert name not in pins, f"{name} twice"
        pins[name] = spec.version
    assert "ray" not in pins and "nlray" not in pins  # the base image's ray; nlray from the source tree
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for dep in map(Requirement, project["dependencies"]):
        name = canonicalize_name(dep.name)
        if name == "ray":
            continue
        assert name in pins, f"{name} (pyproject.toml) is not in the lock"
        assert pins[name] in dep.specifier, f"{name}=={pins[name]} outside pyproject's {dep.specifier}"
    assert "flask-wtf" in pins  # the MLflow server's basic-auth app (mlflow[auth])


def test_aws_nodes_require_imdsv2_encrypt_volumes_and_use_their_own_security_group(aws):
    for name, t in aws["available_node_types"].items():
        nc = t["node_config"]
        assert nc["MetadataOptions"]["HttpTokens"] == "required", name
        assert nc["MetadataOptions"]["HttpPutResponseHopLimit"] <= 2, name
        assert nc["MetadataOptions"].get("HttpEndpoint", "enabled") == "enabled", name
        assert nc["BlockDeviceMappings"] and all(b["Ebs"]["Encrypted"] is True for b in nc["BlockDeviceMappings"])
        groups = nc.get("SecurityGroupIds") or [g for ni in nc["NetworkInterfaces"] for g in ni["Groups"]]
        assert groups and all(re.fullmatch(r"sg-[0-9a-f]{8,17}", g) for g in groups), name
        if name != aws["head_node_type"]:  # workers: no public IP
            assert nc["NetworkInterfaces"] and all(
                ni["AssociatePublicIpAddress"] is False for ni in nc["NetworkInterfaces"]), name
    # with a group on every node type, the launcher creates none (its default allows SSH from 0.0.0.0/0) ...
    assert "security_group" not in aws["provider"]
    from ray.autoscaler._private.aws.config import (_configure_from_network_interfaces,
                                                    _configure_security_group)
    from ray.autoscaler._private.util import prepare_config

    prepared = _configure_from_network_interfaces(prepare_config(copy.deepcopy(aws)))
    assert _configure_security_group(copy.deepcopy(prepared)) == prepared  # returned untouched, no AWS call


def test_aws_security_group_template_allows_ssh_from_one_cidr_only():
    tpl = load(CLUSTER / "aws-security-group.yaml")
    cidr = tpl["Parameters"]["SshCidr"]
    assert "Default" not in cidr  # the user must set it
    pattern = re.compile(cidr["AllowedPattern"])
    for bad in ("0.0.0.0/0", "0.0.0.0/1", "::/0", "10.0.0.1"):
        assert not pattern.fullmatch(bad), bad
    for good in ("203.0.113.7/32", "10.20.0.0/16"):
        assert pattern.fullmatch(good), good
    sg = tpl["Resources"]["ClusterSecurityGroup"]["Properties"]
    (ssh,) = sg["SecurityGroupIngress"]
    assert (ssh["FromPort"], ssh["ToPort"], ssh["CidrIp"]) == (22, 22, {"Ref": "SshCidr"})
    rules = [r["Properties"] for r in tpl["Resources"].values() if r["Type"] == "AWS::EC2::SecurityGroupIngress"]
    assert rules == [{"GroupId": {"Fn::GetAtt": ["ClusterSecurityGroup", "GroupId"]},
                      "SourceSecurityGroupId": {"Fn::GetAtt": ["ClusterSecurityGroup", "GroupId"]},
                      "IpProtocol": "-1", "Description": rules[0]["Description"]}]
    text = (CLUSTER / "aws-security-group.yaml").read_text() + (CLUSTER / "aws.yaml").read_text()
    assert not re.search(r"CidrIp\w*\s*:\s*['\"]?(0\.0\.0\.0/0|::/0)", text)


def test_aws_mlflow_runs_basic_auth_and_every_node_presents_credentials(aws):
    cmd = next(c for c in aws["head_start_ray_commands"] if "mlflow server" in c)
    assert "exec mlflow server --app-name basic-auth" in cmd
    before = cmd[:cmd.index("setsid")]
    for var in ("MLFLOW_AUTH_CONFIG_PATH", "MLFLOW_AUTH_ADMIN_USERNAME", "MLFLOW_AUTH_ADMIN_PASSWORD",
                "MLFLOW_FLASK_SERVER_SECRET_KEY"):
        assert f"export {var}=" in before, var
    # the password is a file copied from the launching machine, read when ~/nlray.env is sourced
    assert aws["file_mounts"]["/home/ubuntu/.nlray/mlflow_password"] == "~/.nlray/mlflow_password"
    env_file = " ".join(c for c in aws["setup_commands"] if "nlray.env" in c)
    assert "'export MLFLOW_TRACKING_PASSWORD=\"$(cat ~/.nlray/mlflow_password)\"'" in env_file
    assert "'export MLFLOW_TRACKING_USERNAME=" in env_file
    assert any("chmod 600" in c and "mlflow_password" in c for c in aws["setup_commands"])
    assert '"mlflow[auth]"' in " ".join(aws["setup_commands"])
    ini = " ".join(aws["head_setup_commands"])
    assert "'default_permission = NO_PERMISSIONS'" in ini and "admin_password" not in ini
    assert "flask_secret_key" in ini and "umask 077" in ini
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        start = next(c for c in aws[key] if "ray start" in c)
        assert "source ~/nlray.env" in start[:start.index("ray start")], key  # credentials before ray start


SECRET_PATTERNS = {
    "AWS access key id": r"\b(AKIA|ASIA)[0-9A-Z]{16}\b",
    "AWS secret key": r"(?i)aws_secret_access_key\s*[:=]",
    "private key": r"-----BEGIN [A-Z ]*PRIVATE KEY-----",
    "ssh key path": r"ssh_private_key\s*:",
    "literal Ray token": r"RAY_AUTH_TOKEN\s*[:=]\s*['\"]?[0-9a-zA-Z]{16,}",
    "hex token": r"\b[0-9a-f]{40,}\b",
}


def test_no_secrets_in_cluster_files():
    files = [p for p in CLUSTER.rglob("*") if p.is_file() and p.suffix in {".yaml", ".py", ""}]
    assert CLUSTER / "aws.yaml" in files and KUBE / "Dockerfile" in files
    for path in files:
        text = path.read_text()
        for what, pattern in SECRET_PATTERNS.items():
            assert not re.search(pattern, text), f"{what} in {path.relative_to(ROOT)}"
    for path in KUBE.glob("*.yaml"):
        for doc in load_all(path):
            for env in _all_env(doc):
                if env["name"] == "RAY_AUTH_TOKEN":
                    assert "value" not in env and "secretKeyRef" in env["valueFrom"], path.name


def _all_env(node):
    if isinstance(node, dict):
        if isinstance(node.get("env"), list):
            yield from node["env"]
        for v in node.values():
            yield from _all_env(v)
    elif isinstance(node, list):
        for v in node:
            yield from _all_env(v)


def test_local_cluster_cli_help():
    done = subprocess.run([sys.executable, str(CLUSTER / "local_cluster.py"), "--help"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "--autoscaling" in done.stdout
