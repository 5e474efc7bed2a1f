"""Typed, validated configuration: dataclasses + YAML presets + dotted overrides.

    cfg = load_config("nl_i3d_r50_128f", ["train.steps=100", "data.batch_size=1"])

A preset is a YAML file in ``nlray/configs/`` (or any path) holding a subset of the
sections of ``Config``; it may name one ``base`` preset that it extends (one level only).
Every setting is declared once, with its default, allowed values and help, in
``nlray/config_fields.py``; ``nlray/config_check.py`` applies those declarations.
Unknown keys and bad values raise ``ConfigError`` naming the key and what is allowed,
before any cluster resource is requested. Models never see this tree: ``build_model``
translates the ``model`` section into keyword arguments.
"""
from __future__ import annotations

import dataclasses
import difflib
import os
import re
from pathlib import Path
from typing import Any, Optional, Sequence

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from nlray.config_check import check_config
from nlray.config_fields import (NAME_PATTERN, ClusterConfig, Config, ConfigError, DataConfig, ModelConfig,
                                 TrackingConfig, TrainConfig, allowed, describe, flatten, get, settings)
from nlray.secrets import move_userinfo_to_env, split_userinfo

__all__ = ["NAME_PATTERN", "ClusterConfig", "Config", "ConfigError", "DataConfig", "ModelConfig", "TrackingConfig",
           "TrainConfig", "apply_overrides", "check_config", "closest", "credentials_on_command_line", "describe",
           "env_layer", "flatten", "from_stored", "from_yaml", "get", "load_config", "preset_names",
           "preset_summaries", "to_yaml"]

PRESET_DIR = Path(__file__).parent / "configs"

# Cluster-wide defaults from the environment (set once on a cluster's nodes by cluster/*.yaml): they
# override a preset's value; command-line overrides override them.
ENV_DEFAULTS = {"NLRAY_STORAGE": "train.storage_path", "NLRAY_DATA": "data.root",
                "MLFLOW_TRACKING_URI": "tracking.uri", "NLRAY_TRAIN_RESOURCE": "cluster.train_resource",
                "NLRAY_DECODE_RESOURCE": "cluster.decode_resource"}


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
    """`` Allowed: a value of type int, > 0.`` for a known dotted key (list indices ignored), from its
    declaration; a section's keys for a section; else ''."""
    full_key = re.sub(r"\[\d+\]", "", full_key)
    f = settings().get(full_key)
    if f is not None:
        rule = f", {allowed(f)}" if allowed(f) else ""
        empty = f" (an empty string: {full_key}='')" if f.type == "str" and not rule else ""
        return f" Allowed: a value of type {f.type}{rule}{empty}."
    if full_key in _sections():
        return f" Allowed: a mapping of {', '.join(f.name for f in dataclasses.fields(_sections()[full_key]))}."
    return ""


def _sections() -> dict[str, type]:
    """Section name -> its dataclass (model -> ModelConfig, ...)."""
    return {f.name: f.default_factory for f in dataclasses.fields(Config)
            if dataclasses.is_dataclass(f.default_factory)}


def _to_object(cfg, what: str) -> Config:
    """The Config dataclass, interpolations resolved; their errors as a one-line ConfigError."""
    try:
        return OmegaConf.to_object(cfg)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or "?"
        raise ConfigError(f"{what}: {key!r}: {str(e).splitlines()[0].rstrip('.')}.{_type_hint(key)}") from None


def _allowed_keys(full_key: str) -> str:
    section = _sections().get(full_key.split(".")[0] if full_key else "")
    return ", ".join(f.name for f in dataclasses.fields(section or Config))


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
    check_config(obj)
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
    check_config(obj)
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
    check_config(obj)
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
