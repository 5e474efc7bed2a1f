"""Typed, validated configuration: dataclasses + YAML presets + dotted overrides.

    cfg = load_config("nl_i3d_r50_128f", ["train.steps=100", "data.batch_size=1"])

A preset is a YAML file in ``nlray/configs/`` (or any path) holding a subset of the
sections below; it may name one ``base`` preset that it extends (one level only).
Unknown keys and bad values raise ``ConfigError`` naming the key and what is allowed,
before any cluster resource is requested. Models never see this tree: ``build_model``
translates the ``model`` section into keyword arguments.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from nlray import choices
from nlray.secrets import move_userinfo_to_env, redact, split_userinfo
from nlray.uris import is_run_ref, parse_uri

PRESET_DIR = Path(__file__).parent / "configs"


class ConfigError(ValueError):
    """A configuration key or value that is not allowed; the message names both (secrets in it redacted)."""

    def __init__(self, message: str):
        super().__init__(redact(message))


@dataclass
class ModelConfig:
    arch: str = "i3d"  # c2d (1xkxk convs) | i3d (I3D 3x1x1, Table 1) | i3d3x3x3 (inflate the 3x3)
    depth: int = 50  # 50 -> stages (3,4,6,3); 101 -> (3,4,23,3)
    stage_depths: Optional[List[int]] = None  # overrides the depth table (the demo preset shrinks it)
    width: int = 64  # conv1 / res2 inner width; res2..res5 inner = width*(1,2,4,8), out = 4x that
    num_classes: int = 0  # 0 = from the dataset's label map (400 for Kinetics-400 in summaries)
    nonlocal_blocks: int = 0  # 0 | 1 | 5 | 10: the paper's placements (PAPER.md "Placement")
    nonlocal_placement: Optional[List[List[int]]] = None  # explicit [[stage, block], ...], overrides
    nl_instantiation: str = "embedded_gaussian"  # gaussian | embedded_gaussian | dot_product | concatenation
    nl_mode: str = "spacetime"  # spacetime | space | time
    nl_subsample: bool = True  # 1x2x2 max-pool on phi and g
    nl_subsample_where: str = "after"  # after (paper: pool phi/g outputs) | before (Caffe2: pool x)
    nl_softmax_scale: bool = False  # Caffe2's (C/2)^-0.5 on theta^T phi; the paper uses none
    nl_temporal_groups: int = 1  # >1: res3 non-local within groups of T/groups frames (Caffe2 128f)
    nl_init_std: float = 0.0  # 0: He init of theta/phi/g/W_z (paper text); >0: N(0, std) (released code: 0.01)
    zero_init_residual: bool = False  # last BN gamma of each residual block at 0 (released code: true)
    fc_init_std: float = 0.0  # 0: PyTorch's Linear init; >0: classifier N(0, std), zero bias (released: 0.01)
    test_head: str = "pool"  # pool (average the res5 map, classify) | conv (released code: classifier per
    #   position of a 7x7 stride-1 average pool over res5, softmax per position, averaged)
    pool_variant: str = "paper"  # paper (pool1 3x3x3, pool2 3x1x1) | caffe2 (2x3x3, 2x1x1)
    temporal_padding: str = "zeros"  # zeros (paper, Caffe2) | replicate (border frames repeated)
    dropout: float = 0.5  # before the classifier
    pretrained: str = "none"  # none | imagenet (torchvision) | path/URI of a torchvision ResNet state dict


@dataclass
class DataConfig:
    root: str = ""  # dataset root (official Kinetics layout) or a manifest .parquet; "" = synthetic set
    synthetic: str = "demo"  # the set used when root is "": demo (6 classes x 50) | tiny (tests) | longrange
    cache_dir: str = "~/.cache/nlray"  # synthetic data and manifests built from a root
    s3_endpoint_url: str = ""  # S3-compatible endpoint; "" = AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL / AWS
    train_split: str = "train"
    val_split: str = "val"
    frames: int = 32  # frames per clip (T)
    frame_stride: int = 2  # 2: 64-frame window, every other frame (32x2); 1: consecutive (128x1)
    train_short_side: List[int] = field(default_factory=lambda: [256, 320])  # random shorter side range
    crop_size: int = 224  # train crop
    eval_short_side: int = 256
    eval_crop_size: int = 256
    eval_num_clips: int = 10  # clips evenly over the video
    eval_num_crops: int = 3  # spatial crops covering the long side
    backend: str = "pyav"  # pyav | decord: PyAV's one-pass seek decoder measured faster here (bench_decode)
    batch_size: int = 8  # clips per worker per step
    decode_actors: int = 8  # decoder actors the pool starts with (and keeps at least)
    # > decode_actors: the pool grows to this while decoding lags (the autoscaler adds decode nodes for it);
    # 96 = 12 a GPU for 8 GPUs, what 32x2 training of transcoded video needs (README "On a cluster")
    decode_actors_max: int = 96
    decode_cpus: float = 1.0  # CPUs reserved per decoder actor
    decode_batch: int = 4  # videos per map_batches call
    shuffle_seed: Optional[int] = None  # None: a new order every epoch
    repeat: int = 1  # passes over the train split per Ray Data epoch (small sets: amortise pipeline start-up)
    flip: bool = True  # mirror training clips left-right with probability 1/2
    flip_label_map: List[List[str]] = field(default_factory=list)  # [[a, b], ...]: a mirrored a-clip is a b-clip
    # Untrusted input (README "Security"): a row of a dataset file outside the root (``..``, an absolute path
    # elsewhere, another scheme or bucket) is refused and counted (``outside_root``) unless this is true.
    allow_outside_root: bool = False
    # Limits per video; a video over one is a bad video with its own reason (nlray/choices.py BAD_VIDEO_REASONS).
    max_video_bytes: int = 256 * 2**20  # bytes read of one object (Kinetics: 1-20 MB) -> too_large
    max_frame_pixels: int = 3840 * 2160  # width x height of the coded frame -> frame_size
    max_aspect_ratio: float = 4.0  # long side / short side (16x16384 scaled to 256 short side: 3 GiB) -> frame_size
    max_packets: int = 100_000  # packets demuxed from one video (~55 min at 30 fps) -> too_many_packets
    progress_interval_s: float = 60.0  # off a terminal: one progress line of the data pipeline per interval
    decode_timeout_s: float = 60.0  # wall time to decode one video's clip(s) (probe, transcode too) -> timeout


@dataclass
class TrainConfig:
    num_workers: int = 8  # Ray Train workers (one per GPU)
    use_gpu: bool = True
    cpus_per_worker: float = 1.0
    steps: int = 400_000  # optimizer steps
    base_lr: float = 0.01  # lr at base_batch clips per step; scaled linearly with the global batch
    base_batch: int = 64
    global_batch: int = 0  # target clips per optimizer step (grad accumulation); 0 = workers x batch
    lr_milestones: List[int] = field(default_factory=lambda: [150_000, 300_000])  # lr x gamma at each
    lr_gamma: float = 0.1
    warmup_steps: int = 0  # linear warm-up from 0
    momentum: float = 0.9
    nesterov: bool = False  # Caffe2 used Nesterov
    weight_decay: float = 1e-4
    weight_decay_bn: bool = True  # False: no decay on BN (Caffe2)
    bf16: bool = True  # autocast on GPU; ignored on CPU
    activation_checkpointing: bool = False
    freeze_bn: bool = False  # every BN a fixed affine (long clips)
    init_from: str = ""  # checkpoint URI, MLflow run id or runs:/<id> of a (32-frame) model
    allow_random_init: bool = False  # true: freeze_bn without init_from / pretrained is allowed (a test, not a run)
    checkpoint_every: int = 1000  # steps
    keep_checkpoints: int = 3
    log_every: int = 20
    precise_bn_batches: int = 0  # >0: recompute BN statistics over this many batches per worker (averaged
    #   over workers) before the final checkpoint and evaluation (released code and PySlowFast: 200); with
    #   freeze_bn, before fine-tuning instead: the frozen statistics are then those of the long clips
    scale_schedule: bool = False  # true: steps and lr milestones are for a global batch of base_batch clips and
    #   scale by base_batch / actual global batch, so a run on fewer workers sees the paper's epochs
    val_num_clips: int = 0  # clips per video of the validation after training; 0 = data.eval_num_clips
    val_num_crops: int = 0  # 0 = data.eval_num_crops
    val_actors: int = 0  # scoring actors of the validation after training (a GPU each on GPUs); 0 = num_workers
    storage_path: str = "~/nlray_results"  # Ray Train checkpoints: local, NFS or s3://
    max_failures: int = 3  # worker-group restarts from the latest checkpoint
    seed: int = 0


@dataclass
class TrackingConfig:
    uri: str = "sqlite:///mlflow.db"  # MLflow tracking URI (a server URL in production)
    experiment: str = "nlray"
    registered_model_name: str = ""  # register the final model under this name when set
    parent_run: str = ""  # MLflow run id: this run is its child (jobs/ablate.py: one parent per table)
    tags: Dict[str, str] = field(default_factory=dict)  # extra MLflow tags (ablation row and seed)
    system_metrics_interval_s: float = 10.0  # CPU, memory, GPU of each training node into the run; 0 = off


@dataclass
class ClusterConfig:
    address: str = ""  # Ray address; "" = connect to a running cluster or start a local one
    num_cpus: int = 0  # logical CPUs of a local Ray; 0 = Ray's default
    # Custom resources that place work on node types (cluster/*.yaml): each train worker asks 1 unit of
    # train_resource, each decoder actor 1 unit of decode_resource. "auto": ask when the cluster has it
    # now; a name: always ask (an autoscaling cluster that starts empty); "": never ask.
    train_resource: str = "auto"
    decode_resource: str = "auto"
    shared_filesystem: bool = False  # every node mounts the same local paths (NFS): local paths are fine


@dataclass
class Config:
    name: str = ""  # run name; resubmitting the same name resumes
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)


# Allowed values of the enumerated keys: key -> allowed (the tuples live in nlray/choices.py).
CHOICES = {
    "model.arch": choices.ARCHS,
    "model.depth": choices.DEPTHS,
    "model.nonlocal_blocks": choices.NONLOCAL_BLOCKS,
    "model.nl_instantiation": choices.INSTANTIATIONS,
    "model.nl_mode": choices.NL_MODES,
    "model.nl_subsample_where": choices.SUBSAMPLE_WHERE,
    "model.pool_variant": choices.POOL_VARIANTS,
    "model.temporal_padding": choices.TEMPORAL_PADDING,
    "data.backend": choices.DECODE_BACKENDS,
    "data.synthetic": choices.SYNTHETIC_SETS,
    "model.test_head": choices.TEST_HEADS,
}
# Cluster-wide defaults from the environment (set once on a cluster's nodes by cluster/*.yaml): they
# override a preset's value; command-line overrides override them.
ENV_DEFAULTS = {"NLRAY_STORAGE": "train.storage_path", "NLRAY_DATA": "data.root",
                "MLFLOW_TRACKING_URI": "tracking.uri", "NLRAY_TRAIN_RESOURCE": "cluster.train_resource",
                "NLRAY_DECODE_RESOURCE": "cluster.decode_resource"}
POSITIVE = ("data.frames", "data.frame_stride", "data.crop_size", "data.eval_short_side",
            "data.eval_crop_size", "data.eval_num_clips", "data.eval_num_crops", "data.batch_size",
            "data.decode_actors", "data.decode_batch", "data.repeat", "model.width", "data.max_video_bytes",
            "data.max_frame_pixels", "data.max_packets", "data.decode_timeout_s",
            "model.nl_temporal_groups", "train.num_workers", "train.steps", "train.base_batch",
            "train.checkpoint_every", "train.keep_checkpoints", "train.log_every", "train.base_lr",
            "train.lr_gamma")
NON_NEGATIVE = ("data.decode_actors_max", "data.decode_cpus", "train.cpus_per_worker", "train.warmup_steps",
                "train.global_batch", "train.weight_decay", "train.val_num_clips", "train.val_num_crops",
                "train.val_actors", "data.progress_interval_s",
                "train.seed", "cluster.num_cpus", "train.precise_bn_batches", "model.nl_init_std",
                "model.fc_init_std", "tracking.system_metrics_interval_s")  # numpy refuses negative seeds; 0 CPUs is Ray's "none"
# A run name is a folder (Ray Train storage), an MLflow tag inside a quoted search filter, a Ray Data name.
NAME_PATTERN = re.compile(r"\w[\w.-]{0,127}")


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def preset_summaries() -> dict[str, str]:
    """Preset name -> the first line of its header comment (what it is, and the paper's figure)."""
    out = {}
    for name in preset_names():
        first = (PRESET_DIR / f"{name}.yaml").read_text().splitlines()[:1]
        out[name] = first[0].lstrip("# ").strip() if first and first[0].startswith("#") else ""
    return out


def closest(word: str, candidates: list[str]) -> str:
    """`` Did you mean 'x'?`` for the nearest candidate to a mistyped name, else ''."""
    match = difflib.get_close_matches(word, candidates, n=1, cutoff=0.6)
    return f" Did you mean {match[0]!r}?" if match else ""


def _read_preset(name_or_path: str) -> dict:
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        path = PRESET_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        raise ConfigError(f"unknown preset {name_or_path!r}.{closest(name_or_path, preset_names())} Presets: "
                          f"{', '.join(preset_names())} (or a path to a .yaml file)")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {' '.join(str(e).split())}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    _refuse_interpolation(data, f"preset {str(path)!r}")
    return data


def _preset_layers(name_or_path: str) -> list[dict]:
    data = _read_preset(name_or_path)
    base = data.pop("base", None)
    if base is None:
        return [data]
    if not isinstance(base, str) or not base:
        raise ConfigError(f"preset {name_or_path!r}: base={base!r} must be one preset name or .yaml path")
    beside = Path(name_or_path).parent / base  # a relative .yaml base is looked for beside the preset first
    parent = _read_preset(str(beside) if Path(base).suffix in (".yaml", ".yml") and beside.is_file() else base)
    if "base" in parent:
        raise ConfigError(f"preset {base!r} has a base of its own; presets extend one level only")
    return [parent, data]


def _merge(schema, layer, what: str, key_hint: str = ""):
    try:
        return OmegaConf.merge(schema, layer)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or key_hint or _bad_key(schema, layer) or "?"
        msg = str(e).splitlines()[0].rstrip(".")
        hint = f" Allowed keys here: {_allowed_keys(key)}" if "not in" in msg else _type_hint(key)
        raise ConfigError(f"{what}: {key!r}: {msg}.{hint}") from None


def _bad_key(schema, layer: Any) -> str:
    """The first ``section`` or ``section.leaf`` of a preset layer that fails to merge on its own; '' if none.

    OmegaConf names no key when a section is not a mapping (``model: 3``) or a list field gets a scalar."""
    for section, values in (layer.items() if isinstance(layer, dict) else []):
        parts = values.items() if isinstance(values, dict) else [("", values)]
        for leaf, value in parts:
            try:
                OmegaConf.merge(schema, {section: {leaf: value} if leaf else value})
            except OmegaConfBaseException:
                return f"{section}.{leaf}" if leaf else section
    return ""


def _type_hint(full_key: str) -> str:
    """`` Allowed: a value of type List[int].`` for a known dotted key (list indices ignored), else ''."""
    obj: Any = Config()
    full_key = re.sub(r"\[\d+\]", "", full_key)
    for part in full_key.split("."):
        fields = {f.name: f for f in dataclasses.fields(obj)} if dataclasses.is_dataclass(obj) else {}
        if part not in fields:
            return ""
        ftype, obj = fields[part].type, getattr(obj, part)
    if dataclasses.is_dataclass(obj):
        return f" Allowed: a mapping of {', '.join(f.name for f in dataclasses.fields(obj))}."
    empty = f" (an empty string: {full_key}='')" if ftype == "str" else ""
    return f" Allowed: a value of type {ftype}{empty}."


def _to_object(cfg, what: str) -> Config:
    """The Config dataclass, interpolations resolved; their errors as a one-line ConfigError."""
    try:
        return OmegaConf.to_object(cfg)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or "?"
        raise ConfigError(f"{what}: {key!r}: {str(e).splitlines()[0].rstrip('.')}.{_type_hint(key)}") from None


def _allowed_keys(full_key: str) -> str:
    section = full_key.split(".")[0] if full_key else ""
    obj = Config()
    if section and hasattr(obj, section) and dataclasses.is_dataclass(getattr(obj, section)):
        return ", ".join(f.name for f in dataclasses.fields(getattr(obj, section)))
    return ", ".join(f.name for f in dataclasses.fields(Config))


def load_config(preset: str = "demo", overrides: Optional[list[str]] = None) -> Config:
    """Defaults <- preset's base <- preset <- dotted overrides (``train.steps=10``), validated.

    ``preset`` may be several, comma-separated: each later one an overlay on the ones before
    (``nl_i3d_r50_32f,caffe2``: the preset with the released code's settings).
    """
    cfg = _merge(_presets(preset), env_layer(), "environment")
    return _overridden(cfg, overrides or [])


def _presets(preset: str):
    """Defaults <- each comma-separated preset (its base first), as an OmegaConf tree."""
    cfg = OmegaConf.structured(Config)
    for name in preset.split(","):
        for layer in _preset_layers(name.strip()):
            cfg = _merge(cfg, layer, f"preset {name.strip()!r}")
    return cfg


def env_layer(environ: Optional[dict] = None) -> dict:
    """``{"train": {"storage_path": ...}, ...}`` from the ENV_DEFAULTS variables that are set."""
    environ = os.environ if environ is None else environ
    layer: dict = {}
    for var, key in ENV_DEFAULTS.items():
        if environ.get(var):
            section, name = key.split(".")
            layer.setdefault(section, {})[name] = _escaped(environ[var])  # data: never interpolated
    return layer


def apply_overrides(cfg: Config, overrides: list[str]) -> Config:
    """A new validated Config: ``cfg`` with dotted ``section.key=value`` overrides (``cfg``'s strings are
    data: a literal ``${`` in them stays literal)."""
    return _overridden(OmegaConf.merge(OmegaConf.structured(Config), _escaped(dataclasses.asdict(cfg))), overrides)


def _overridden(cfg, overrides: list[str]) -> Config:
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form section.key=value")
        key, _, value = item.partition("=")
        _refuse_interpolation({key.strip(): value}, f"override {item!r}")
        if key.strip() == "tracking.uri" and split_userinfo(value.strip())[1] is not None:
            raise ConfigError(credentials_on_command_line(f"override {item!r}"))
        if value.strip().strip("'\"") == "???":  # OmegaConf's "missing": merging it would silently keep the old value
            raise ConfigError(f"override {item!r}: {key!r}: '???' is not a value.{_type_hint(key)}")
        try:
            layer = OmegaConf.from_dotlist([item])
        except (OmegaConfBaseException, yaml.YAMLError) as e:
            raise ConfigError(f"override {item!r}: {key!r}: {' '.join(str(e).split())}") from None
        cfg = _merge(cfg, layer, f"override {item!r}", key.strip())
    obj = _to_object(cfg, "overrides")
    obj.tracking.uri = move_userinfo_to_env(obj.tracking.uri)  # credentials live in the environment only
    validate(obj)
    return obj


def credentials_on_command_line(what: str) -> str:
    """Why a tracking URI with user:password@ is refused on a command line, and what to do instead."""
    return (f"{what}: a password on a command line is seen by every user of the machine (ps) and recorded by "
            "Ray as the job's entrypoint: give the URI without it and set MLFLOW_TRACKING_USERNAME / "
            "MLFLOW_TRACKING_PASSWORD (or put the whole URI in MLFLOW_TRACKING_URI)")


# An OmegaConf interpolation: "${" after an even number of backslashes ("\\${" is an escaped literal).
_INTERPOLATION = re.compile(r"(?<!\\)(?:\\\\)*\$\{")


def _refuse_interpolation(value: Any, what: str, key: str = "") -> None:
    """ConfigError for a string holding ``${...}``: configs are data (a stored config resolving
    ``${oc.env:AWS_SECRET_ACCESS_KEY}`` would read the reader's environment); ``\\${`` is a literal."""
    if isinstance(value, dict):
        for k, v in value.items():
            _refuse_interpolation(v, what, f"{key}.{k}" if key else str(k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _refuse_interpolation(v, what, f"{key}[{i}]")
    elif isinstance(value, str) and _INTERPOLATION.search(value):
        raise ConfigError(f"{what}: {key!r}: {value!r} holds an interpolation '${{...}}': nlray reads configs as "
                          "data and resolves none (write a literal '${' as '\\${')")


def get(cfg: Config, dotted: str) -> Any:
    obj: Any = cfg
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def validate(cfg: Config) -> None:
    """Raise ConfigError for a value outside its allowed set or range."""
    for key, value in flatten(cfg).items():
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{key}={value!r} must be a finite number")
    if cfg.name and not NAME_PATTERN.fullmatch(cfg.name):
        raise ConfigError(f"name={cfg.name!r} must be 1-128 letters, digits, '_', '.' or '-' (it names a folder "
                          "and an MLflow run), not starting with '.' or '-'")
    for key, allowed in CHOICES.items():
        if get(cfg, key) not in allowed:
            raise ConfigError(f"{key}={get(cfg, key)!r} is not allowed; choose one of {list(allowed)}")
    for key in POSITIVE:
        if get(cfg, key) <= 0:
            raise ConfigError(f"{key}={get(cfg, key)!r} must be > 0")
    for key in NON_NEGATIVE:
        if get(cfg, key) < 0:
            raise ConfigError(f"{key}={get(cfg, key)!r} must be >= 0")
    if cfg.train.max_failures < -1:
        raise ConfigError(f"train.max_failures={cfg.train.max_failures} must be >= -1 (-1: retry forever)")
    _check_uris(cfg)
    if not 0.0 <= cfg.train.momentum < 1.0:
        raise ConfigError(f"train.momentum={cfg.train.momentum!r} must be in [0, 1)")
    if any(type(m) is not int or m < 0 for m in cfg.train.lr_milestones):
        raise ConfigError(f"train.lr_milestones={cfg.train.lr_milestones!r} must be steps >= 0")
    if cfg.data.shuffle_seed is not None and cfg.data.shuffle_seed < 0:
        raise ConfigError(f"data.shuffle_seed={cfg.data.shuffle_seed} must be null (a new order each epoch) or >= 0")
    lo_hi = cfg.data.train_short_side
    if len(lo_hi) != 2 or not 0 < lo_hi[0] <= lo_hi[1] or lo_hi[0] < cfg.data.crop_size:
        raise ConfigError(f"data.train_short_side={lo_hi!r} must be [lo, hi] with "
                          f"data.crop_size ({cfg.data.crop_size}) <= lo <= hi")
    if cfg.data.eval_crop_size > cfg.data.eval_short_side:
        raise ConfigError(f"data.eval_crop_size={cfg.data.eval_crop_size} must be <= "
                          f"data.eval_short_side={cfg.data.eval_short_side}")
    if cfg.model.stage_depths is not None:
        try:
            choices.check_stage_depths(cfg.model.stage_depths)
        except ValueError as e:
            raise ConfigError(f"model.{e}") from None
        except TypeError:  # a nested list: min() cannot compare
            raise ConfigError(f"model.stage_depths={cfg.model.stage_depths!r} must be 4 integers >= 1") from None
    _check_placement(cfg.model)
    if cfg.model.num_classes < 0:
        raise ConfigError(f"model.num_classes={cfg.model.num_classes!r} must be >= 0 (0 = from the labels)")
    if cfg.data.decode_actors_max and cfg.data.decode_actors_max < cfg.data.decode_actors:
        raise ConfigError(f"data.decode_actors_max={cfg.data.decode_actors_max} must be 0 (a fixed pool) or "
                          f">= data.decode_actors={cfg.data.decode_actors}")
    if cfg.data.max_aspect_ratio < 1.0:
        raise ConfigError(f"data.max_aspect_ratio={cfg.data.max_aspect_ratio!r} must be >= 1 (long side / short side)")
    if not 0.0 <= cfg.model.dropout < 1.0:
        raise ConfigError(f"model.dropout={cfg.model.dropout!r} must be in [0, 1)")
    for pair in cfg.data.flip_label_map:
        if len(pair) != 2 or pair[0] == pair[1]:
            raise ConfigError(f"data.flip_label_map entry {pair!r} must be two different label names [a, b]")
    if cfg.train.global_batch and cfg.train.global_batch % (cfg.train.num_workers * cfg.data.batch_size):
        raise ConfigError(f"train.global_batch={cfg.train.global_batch} must be a multiple of "
                          f"train.num_workers x data.batch_size = "
                          f"{cfg.train.num_workers * cfg.data.batch_size}")


def _check_uris(cfg: Config) -> None:
    """ConfigError for a storage URI of an unsupported form, and for credentials inside an endpoint URI."""
    uris = {"data.root": cfg.data.root, "train.storage_path": cfg.train.storage_path,
            "data.cache_dir": cfg.data.cache_dir}
    if cfg.train.init_from and not is_run_ref(cfg.train.init_from):
        uris["train.init_from"] = cfg.train.init_from
    if cfg.model.pretrained not in ("none", "imagenet"):
        uris["model.pretrained"] = cfg.model.pretrained
    for key, uri in uris.items():
        if uri:
            try:
                parse_uri(uri)
            except ValueError as e:
                raise ConfigError(f"{key}: {e}") from None
    for key in ("data.s3_endpoint_url", "cluster.address"):
        if split_userinfo(get(cfg, key))[1] is not None:
            raise ConfigError(f"{key}={get(cfg, key)!r} holds credentials (user:password@): give them in the "
                              "environment the client reads instead (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY "
                              "for S3, RAY_AUTH_TOKEN for Ray)")


def _check_placement(m: ModelConfig) -> None:
    """ConfigError unless every ``model.nonlocal_placement`` entry is [stage 2..5, block of that stage]."""
    depths = list(m.stage_depths or choices.STAGE_DEPTHS[m.depth])
    for pair in m.nonlocal_placement or []:
        ok = (isinstance(pair, list) and len(pair) == 2 and all(type(i) is int for i in pair)
              and 2 <= pair[0] < 2 + len(depths) and 0 <= pair[1] < depths[pair[0] - 2])
        if not ok:
            raise ConfigError(f"model.nonlocal_placement entry {pair!r} must be [stage, block] with stage 2..5 "
                              f"and block 0..depth-1 of that stage (model.stage_depths / model.depth: {depths})")


def to_yaml(cfg: Config) -> str:
    """YAML that ``from_yaml`` reads back to an equal Config (a literal ``${`` escaped, not interpolated)."""
    return OmegaConf.to_yaml(OmegaConf.create(_escaped(dataclasses.asdict(cfg))))


def _escaped(value: Any) -> Any:
    """Strings with OmegaConf's interpolation escaped: ``${`` -> ``\\${`` (backslashes before it doubled)."""
    if isinstance(value, str):
        return re.sub(r"(\\*)\$\{", lambda m: m.group(1) * 2 + "\\${", value)
    if isinstance(value, dict):
        return {k: _escaped(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_escaped(v) for v in value]
    return value


def from_yaml(text: str) -> Config:
    """This process's own config back from ``to_yaml`` (the driver hands it to its workers), validated."""
    cfg = _merge(OmegaConf.structured(Config), _saved_mapping(text), "saved config")
    obj = _to_object(cfg, "saved config")
    validate(obj)
    return obj


# What a config stored by someone else (a checkpoint's or an MLflow run's config.yaml) may decide: the
# model and the shape of its clips. Where to connect, what to read, credentials and caches come from the
# caller (README "Security").
STORED_DATA_KEYS = ("frames", "frame_stride", "crop_size", "train_short_side", "eval_short_side",
                    "eval_crop_size", "eval_num_clips", "eval_num_crops", "backend", "synthetic", "train_split",
                    "val_split", "batch_size")


def from_stored(text: str, overrides: Sequence[str] = (), *, root: Optional[str] = None,
                preset: str = "demo") -> Config:
    """The caller's ``preset`` <- a stored config's model, clip-shape keys and name <- environment <-
    overrides <- ``root``. A stored config trained on a dataset root names it only in the error when the
    caller gives none."""
    saved = _saved_mapping(text)
    data = saved.get("data") if isinstance(saved.get("data"), dict) else {}
    kept = {"model": saved.get("model", {}), "data": {k: data[k] for k in STORED_DATA_KEYS if k in data}}
    if "name" in saved:
        kept["name"] = saved["name"]
    cfg = _merge(_presets(preset), {"model": OmegaConf.structured(ModelConfig)}, "defaults")  # the stored model, whole
    cfg = _merge(cfg, kept, "saved config")
    cfg = _merge(cfg, env_layer(), "environment")
    obj = _overridden(cfg, list(overrides))
    if root is not None:
        obj.data.root = root
    if not obj.data.root and data.get("root"):
        raise ConfigError(f"the model was trained on data.root={str(data['root'])!r}: give the data to read "
                          "(--data, NLRAY_DATA or data.root=): a stored config does not choose what to read")
    validate(obj)
    return obj


def _saved_mapping(text: str) -> dict:
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"saved config: not valid YAML: {' '.join(str(e).split())}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"saved config: expected a mapping at the top level, got {type(data).__name__}")
    _refuse_interpolation(data, "saved config")
    return data


def flatten(cfg: Config) -> dict[str, Any]:
    """``{"model.arch": "i3d", ...}``: MLflow params."""
    out: dict[str, Any] = {}

    def walk(prefix: str, obj: Any) -> None:
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            key = f"{prefix}{f.name}"
            if dataclasses.is_dataclass(value):
                walk(key + ".", value)
            else:
                out[key] = value

    walk("", cfg)
    return out
