"""Every setting declared once: its type, default, allowed values or range and one line of help.

    steps: int = setting(400_000, "optimizer steps", bounds=POSITIVE)

``nlray.config_check`` validates a Config against these declarations, ``describe`` lists them (--help, the
"Allowed:" of a type error), and the property tests draw their keys, enums and ranges from ``settings()``.
The few rules that tie two settings together are ``nlray.config_check.CROSS_FIELD_RULES``.
"""
from __future__ import annotations

import copy
import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional

from nlray import choices
from nlray.secrets import redact, split_userinfo
from nlray.uris import is_run_ref, parse_uri


class ConfigError(ValueError):
    """A configuration key or value that is not allowed; the message names both (secrets in it redacted)."""

    def __init__(self, message: str):
        super().__init__(redact(message))


@dataclass(frozen=True)
class Bounds:
    """The numbers a setting takes: ``low < x`` (``open``) or ``low <= x``, and ``x < high`` when given."""
    low: float
    open: bool = False
    high: Optional[float] = None

    def __contains__(self, x: Any) -> bool:
        return (x > self.low if self.open else x >= self.low) and (self.high is None or x < self.high)

    def __str__(self) -> str:
        if self.high is not None:
            return f"in {'(' if self.open else '['}{self.low:g}, {self.high:g})"
        return f"{'>' if self.open else '>='} {self.low:g}"


POSITIVE = Bounds(0, open=True)
NON_NEGATIVE = Bounds(0)
FRACTION = Bounds(0, high=1)  # [0, 1)

# A check of one value beyond its choices and bounds: (dotted key, value) -> what is wrong, or ''.
Check = Callable[[str, Any], str]


def setting(default: Any, help: str, *, choices: Optional[tuple] = None, bounds: Optional[Bounds] = None,
            note: str = "", check: Optional[Check] = None) -> Any:
    """A dataclass field that carries its rules: ``choices`` (a tuple of nlray/choices.py), ``bounds`` (of a
    number; of each entry of a list), ``note`` (said after a bounds error), ``check`` (any other rule)."""
    meta = {"help": help, "choices": choices, "bounds": bounds, "note": note, "check": check}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata=meta)
    return field(default=default, metadata=meta)


# A run name is a folder (Ray Train storage), an MLflow tag inside a quoted search filter, a Ray Data name.
NAME_PATTERN = re.compile(r"\w[\w.-]{0,127}")


def _run_name(key: str, name: str) -> str:
    if name and not NAME_PATTERN.fullmatch(name):
        return (f"{key}={name!r} must be 1-128 letters, digits, '_', '.' or '-' (it names a folder and an MLflow "
                "run), not starting with '.' or '-'")
    return ""


def _uri(key: str, uri: str) -> str:
    """A storage location of a supported form (nlray/uris.py), or ''."""
    try:
        if uri:
            parse_uri(uri)
    except ValueError as e:
        return f"{key}: {e}"
    return ""


def _uri_or_run(key: str, ref: str) -> str:
    return "" if is_run_ref(ref) else _uri(key, ref)


def _uri_or_pretrained(key: str, source: str) -> str:
    return "" if source in choices.PRETRAINED_NAMES else _uri(key, source)


def _no_credentials(key: str, uri: str) -> str:
    if split_userinfo(uri)[1] is not None:
        return (f"{key}={uri!r} holds credentials (user:password@): give them in the environment the client reads "
                "instead (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY for S3, RAY_AUTH_TOKEN for Ray)")
    return ""


def _stage_depths(key: str, depths: Optional[list]) -> str:
    try:
        if depths is not None:
            choices.check_stage_depths(depths)
    except ValueError as e:
        return f"model.{e}"
    except TypeError:  # a nested list: min() cannot compare
        return f"{key}={depths!r} must be 4 integers >= 1"
    return ""


def _label_pairs(key: str, pairs: list) -> str:
    bad = [p for p in pairs if len(p) != 2 or p[0] == p[1]]
    return f"{key} entry {bad[0]!r} must be two different label names [a, b]" if bad else ""


@dataclass
class ModelConfig:
    arch: str = setting("i3d", "c2d (1xkxk convs) | i3d (I3D 3x1x1, Table 1) | i3d3x3x3 (inflate the 3x3)",
                        choices=choices.ARCHS)
    depth: int = setting(50, "ResNet depth: 50 -> residual blocks (3,4,6,3) in res2..res5; 101 -> (3,4,23,3)",
                         choices=choices.DEPTHS)
    stage_depths: Optional[List[int]] = setting(None, "residual blocks of res2..res5, overriding the depth table "
                                                "(the demo preset shrinks it)", check=_stage_depths)
    width: int = setting(64, "conv1 / res2 inner width; res2..res5 inner = width*(1,2,4,8), out = 4x that",
                         bounds=POSITIVE)
    num_classes: int = setting(0, "classes; 0 = from the dataset's label map (400 for Kinetics-400 in summaries)",
                               bounds=NON_NEGATIVE, note="0 = from the labels")
    nonlocal_blocks: int = setting(0, 'non-local blocks: the paper\'s placements (docs/paper.md "Placement")',
                                   choices=choices.NONLOCAL_BLOCKS)
    nonlocal_placement: Optional[List[List[int]]] = setting(
        None, "explicit [[stage, block], ...] (stage 2..5, block 0-based), overrides nonlocal_blocks")
    nl_instantiation: str = setting("embedded_gaussian", 'the pairwise function f (docs/paper.md "Instantiations")',
                                    choices=choices.INSTANTIATIONS)
    nl_mode: str = setting("spacetime", "what the non-local block attends over (Table 2d)", choices=choices.NL_MODES)
    nl_subsample: bool = setting(True, "1x2x2 max-pool on phi and g")
    nl_subsample_where: str = setting("after", "after (paper: pool phi/g outputs) | before (Caffe2: pool x)",
                                      choices=choices.SUBSAMPLE_WHERE)
    nl_softmax_scale: bool = setting(False, "Caffe2's (C/2)^-0.5 on theta^T phi; the paper uses none")
    nl_temporal_groups: int = setting(1, ">1: res3 non-local within groups of T/groups frames (Caffe2 128f)",
                                      bounds=POSITIVE)
    nl_init_std: float = setting(0.0, "0: He init of theta/phi/g/W_z (paper text); >0: N(0, std) (released code: "
                                 "0.01)", bounds=NON_NEGATIVE)
    zero_init_residual: bool = setting(False, "last BN gamma of each residual block at 0 (released code: true)")
    fc_init_std: float = setting(0.0, "0: PyTorch's Linear init; >0: classifier N(0, std), zero bias (released: "
                                 "0.01)", bounds=NON_NEGATIVE)
    test_head: str = setting("pool", "pool (average the res5 map, classify) | conv (released code: classifier per "
                             "position of a 7x7 stride-1 average pool over res5, softmax per position, averaged)",
                             choices=choices.TEST_HEADS)
    pool_variant: str = setting("paper", "paper (pool1 3x3x3, pool2 3x1x1) | caffe2 (2x3x3, 2x1x1)",
                                choices=choices.POOL_VARIANTS)
    temporal_padding: str = setting("zeros", "zeros (paper, Caffe2) | replicate (border frames repeated)",
                                    choices=choices.TEMPORAL_PADDING)
    dropout: float = setting(0.5, "dropout before the classifier", bounds=FRACTION)
    pretrained: str = setting("none", "none | imagenet (torchvision) | path/URI of a torchvision ResNet state dict",
                              check=_uri_or_pretrained)


@dataclass
class DataConfig:
    root: str = setting("", "dataset root (official Kinetics layout) or a manifest .parquet; '' = synthetic set",
                        check=_uri)
    synthetic: str = setting("demo", "the set used when root is '': demo (6 classes x 50) | tiny (tests) | longrange",
                             choices=choices.SYNTHETIC_SETS)
    cache_dir: str = setting("~/.cache/nlray", "synthetic data and manifests built from a root", check=_uri)
    s3_endpoint_url: str = setting("", "S3-compatible endpoint; '' = AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL / AWS",
                                   check=_no_credentials)
    train_split: str = setting("train", "the split trained on")
    val_split: str = setting("val", "the split validated on")
    frames: int = setting(32, "frames per clip (T)", bounds=POSITIVE)
    frame_stride: int = setting(2, "2: 64-frame window, every other frame (32x2); 1: consecutive (128x1)",
                                bounds=POSITIVE)
    train_short_side: List[int] = setting([256, 320], "[lo, hi]: random shorter side range, crop_size <= lo")
    crop_size: int = setting(224, "train crop", bounds=POSITIVE)
    eval_short_side: int = setting(256, "shorter side of evaluated videos", bounds=POSITIVE)
    eval_crop_size: int = setting(256, "evaluation crop, <= eval_short_side", bounds=POSITIVE)
    eval_num_clips: int = setting(10, "clips evenly over the video", bounds=POSITIVE)
    eval_num_crops: int = setting(3, "spatial crops covering the long side", bounds=POSITIVE)
    backend: str = setting("pyav", "video decoder: PyAV's one-pass seek decoder measured faster here (bench_decode)",
                           choices=choices.DECODE_BACKENDS)
    batch_size: int = setting(8, "clips per worker per step", bounds=POSITIVE)
    decode_actors: int = setting(8, "decoder actors the pool starts with (and keeps at least)", bounds=POSITIVE)
    decode_actors_max: int = setting(
        96, "0: a fixed pool; > decode_actors: the pool grows to this while decoding lags (the autoscaler adds "
        "decode nodes for it); 96 = 12 a GPU for 8 GPUs, what 32x2 training of transcoded video needs (README "
        '"On a cluster")', bounds=NON_NEGATIVE)
    decode_cpus: float = setting(1.0, "CPUs reserved per decoder actor", bounds=NON_NEGATIVE)
    decode_batch: int = setting(4, "videos per map_batches call", bounds=POSITIVE)
    shuffle_seed: Optional[int] = setting(None, "null: a new order every epoch", bounds=NON_NEGATIVE,
                                          note="or null: a new order each epoch")
    repeat: int = setting(1, "passes over the train split per Ray Data epoch (small sets: amortise pipeline "
                          "start-up)", bounds=POSITIVE)
    flip: bool = setting(True, "mirror training clips left-right with probability 1/2")
    flip_label_map: List[List[str]] = setting([], "[[a, b], ...]: a mirrored a-clip is a b-clip", check=_label_pairs)
    # Untrusted input (README "Security"); a video over one of the limits per video is a bad video with its own
    # reason (nlray/choices.py BAD_VIDEO_REASONS).
    allow_outside_root: bool = setting(False, "true: read rows of a dataset file outside the root (``..``, an "
                                       "absolute path elsewhere, another scheme or bucket); false: refuse and count "
                                       "them (outside_root)")
    max_video_bytes: int = setting(256 * 2**20, "bytes read of one object (Kinetics: 1-20 MB) -> too_large",
                                   bounds=POSITIVE)
    max_frame_pixels: int = setting(3840 * 2160, "width x height of the coded frame -> frame_size", bounds=POSITIVE)
    max_aspect_ratio: float = setting(4.0, "long side / short side (16x16384 scaled to 256 short side: 3 GiB) -> "
                                      "frame_size", bounds=Bounds(1), note="long side / short side")
    max_packets: int = setting(100_000, "packets demuxed from one video (~55 min at 30 fps) -> too_many_packets",
                               bounds=POSITIVE)
    progress_interval_s: float = setting(60.0, "off a terminal: one progress line of the data pipeline per interval",
                                         bounds=NON_NEGATIVE)
    decode_timeout_s: float = setting(60.0, "wall time to decode one video's clip(s) (probe, transcode too) -> "
                                      "timeout", bounds=POSITIVE)


@dataclass
class TrainConfig:
    num_workers: int = setting(8, "Ray Train workers (one per GPU); with min_workers, the most", bounds=POSITIVE)
    min_workers: int = setting(0, "elastic: start once this many workers fit, grow to num_workers when room "
                               "appears, shrink when a node goes (the global batch stays); 0 = num_workers, a "
                               "fixed size", bounds=NON_NEGATIVE)
    resize_interval_s: float = setting(60.0, "elastic: seconds between Ray Train's looks for room to grow",
                                       bounds=POSITIVE)
    preemption_check_every: int = setting(1, "steps between asks for a preemption notice (every worker alike); "
                                          "a notice saves a checkpoint at once", bounds=POSITIVE)
    preemption_grace_s: float = setting(10.0, "seconds past a preemption notice's deadline before Ray Train "
                                        "restarts the workers, so that the node's death is seen first",
                                        bounds=NON_NEGATIVE)
    max_preemptions: int = setting(-1, "restarts after node preemptions (a drain notice), apart from "
                                   "max_failures", bounds=Bounds(-1), note="-1: unlimited")
    use_gpu: bool = setting(True, "train on GPUs")
    cpus_per_worker: float = setting(1.0, "CPUs reserved per train worker", bounds=NON_NEGATIVE)
    steps: int = setting(400_000, "optimizer steps", bounds=POSITIVE)
    base_lr: float = setting(0.01, "lr at base_batch clips per step; scaled linearly with the global batch",
                             bounds=POSITIVE)
    base_batch: int = setting(64, "the global batch base_lr is for", bounds=POSITIVE)
    global_batch: int = setting(0, "target clips per optimizer step (grad accumulation); 0 = workers x batch",
                                bounds=NON_NEGATIVE)
    lr_milestones: List[int] = setting([150_000, 300_000], "steps at which the lr is multiplied by lr_gamma",
                                       bounds=NON_NEGATIVE, note="steps")
    lr_gamma: float = setting(0.1, "lr factor at each milestone", bounds=POSITIVE)
    warmup_steps: int = setting(0, "linear warm-up from 0", bounds=NON_NEGATIVE)
    momentum: float = setting(0.9, "SGD momentum", bounds=FRACTION)
    nesterov: bool = setting(False, "Nesterov momentum (Caffe2 used it)")
    weight_decay: float = setting(1e-4, "L2 weight decay", bounds=NON_NEGATIVE)
    weight_decay_bn: bool = setting(True, "false: no decay on BN (Caffe2)")
    bf16: bool = setting(True, "bfloat16 autocast on GPU; ignored on CPU")
    activation_checkpointing: bool = setting(False, "recompute activations in the backward pass (less memory)")
    channels_last: bool = setting(False, "model weights and input clips in channels_last_3d memory format (same "
                                  "values; cuDNN's 3D convolutions may run faster)")
    compile: bool = setting(False, "torch.compile the model on each worker, before DDP (the first step compiles; "
                            "on CPU needs a C++ compiler)")
    freeze_bn: bool = setting(False, "every BN a fixed affine (long clips)")
    init_from: str = setting("", "checkpoint URI, MLflow run id or runs:/<id> of a (32-frame) model",
                             check=_uri_or_run)
    allow_random_init: bool = setting(False, "true: freeze_bn without init_from / pretrained is allowed (a test, "
                                      "not a run)")
    checkpoint_every: int = setting(1000, "steps between checkpoints", bounds=POSITIVE)
    keep_checkpoints: int = setting(3, "checkpoints kept", bounds=POSITIVE)
    log_every: int = setting(20, "steps between logged metrics", bounds=POSITIVE)
    precise_bn_batches: int = setting(
        0, ">0: recompute BN statistics over this many batches per worker (averaged over workers) before the final "
        "checkpoint and evaluation (released code and PySlowFast: 200); with freeze_bn, before fine-tuning "
        "instead: the frozen statistics are then those of the long clips", bounds=NON_NEGATIVE)
    scale_schedule: bool = setting(False, "true: steps and lr milestones are for a global batch of base_batch clips "
                                   "and scale by base_batch / actual global batch, so a run on fewer workers sees "
                                   "the paper's epochs")
    val_num_clips: int = setting(0, "clips per video of the validation after training; 0 = data.eval_num_clips",
                                 bounds=NON_NEGATIVE)
    val_num_crops: int = setting(0, "crops per clip of that validation; 0 = data.eval_num_crops",
                                 bounds=NON_NEGATIVE)
    val_actors: int = setting(0, "scoring actors of that validation (a GPU each on GPUs); 0 = num_workers",
                              bounds=NON_NEGATIVE)
    storage_path: str = setting("~/nlray_results", "Ray Train checkpoints: local, NFS or s3://", check=_uri)
    max_failures: int = setting(3, "worker-group restarts from the latest checkpoint", bounds=Bounds(-1),
                                note="-1: retry forever")
    seed: int = setting(0, "random seed (numpy refuses negative ones)", bounds=NON_NEGATIVE)


@dataclass
class TrackingConfig:
    uri: str = setting("sqlite:///mlflow.db", "MLflow tracking URI (a server URL in production)")
    experiment: str = setting("nlray", "MLflow experiment")
    registered_model_name: str = setting("", "register the final model under this name when set")
    parent_run: str = setting("", "MLflow run id: this run is its child (jobs/ablate.py: one parent per table)")
    tags: Dict[str, str] = setting({}, "extra MLflow tags (ablation row and seed)")
    system_metrics_interval_s: float = setting(10.0, "CPU, memory, GPU of each training node into the run; 0 = off",
                                               bounds=NON_NEGATIVE)


@dataclass
class ClusterConfig:
    address: str = setting("", "Ray address; '' = connect to a running cluster or start a local one",
                           check=_no_credentials)
    num_cpus: int = setting(0, "logical CPUs of a local Ray; 0 = Ray's default", bounds=NON_NEGATIVE)
    # Custom resources that place work on node types (cluster/*.yaml): each train worker asks 1 unit of
    # train_resource, each decoder actor 1 unit of decode_resource.
    train_resource: str = setting("auto", "auto: ask when the cluster has it now; a name: always ask (an "
                                  "autoscaling cluster that starts empty); '': never ask")
    decode_resource: str = setting("auto", "as train_resource, for the decoder actors")
    shared_filesystem: bool = setting(False, "every node mounts the same local paths (NFS): local paths are fine")


@dataclass
class Config:
    name: str = setting("", "run name; resubmitting the same name resumes", check=_run_name)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)


def settings(schema: Any = Config, prefix: str = "") -> dict[str, dataclasses.Field]:
    """Every setting's dotted key -> its dataclass field (``.metadata`` holds its rules), in declaration order."""
    out: dict[str, dataclasses.Field] = {}
    for f in dataclasses.fields(schema):
        if dataclasses.is_dataclass(f.default_factory):  # a section
            out.update(settings(f.default_factory, f"{prefix}{f.name}."))
        else:
            out[f"{prefix}{f.name}"] = f
    return out


def allowed(f: dataclasses.Field) -> str:
    """What a setting takes beyond its type: ``one of [...]``, ``> 0``, ... ('' when any value of the type)."""
    if f.metadata.get("choices") is not None:
        return f"one of {list(f.metadata['choices'])}"
    bounds, note = f.metadata.get("bounds"), f.metadata.get("note")
    return f"{bounds}{f' ({note})' if note else ''}" if bounds is not None else ""


def describe(keys: Optional[list[str]] = None) -> list[str]:
    """``key: type = default  help [allowed]`` for each setting (all by default), as --help lists them."""
    fields, defaults = settings(), flatten(Config())
    lines = []
    for key in keys or list(fields):
        f = fields[key]
        rule = f" [{allowed(f)}]" if allowed(f) else ""
        lines.append(f"{key}: {f.type} = {defaults[key]!r}  {f.metadata.get('help', '')}{rule}")
    return lines


def get(cfg: Any, dotted: str) -> Any:
    obj: Any = cfg
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def flatten(cfg: Config) -> dict[str, Any]:
    """``{"model.arch": "i3d", ...}``: MLflow params."""
    return {key: get(cfg, key) for key in settings(type(cfg))}
