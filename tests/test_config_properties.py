"""nlray.config and the jobs' command line under generated input (hypothesis).

Every dotted override or preset file either loads into a Config that survives ``to_yaml``/``from_yaml``
unchanged, or is refused with a one-line ConfigError that names the key; the command line turns that into
exit code 2 before Ray is asked for anything. The keys, enums and ranges come from each setting's one
declaration (nlray/config_fields.py), so a new setting or choice is covered as soon as it is declared; what
"inside a range" means is written out here (``in_range``) and checked against what the config accepts.
"""
from __future__ import annotations

import dataclasses
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nlray.config import Config, ConfigError, flatten, from_yaml, get, load_config, to_yaml
from nlray.config_check import CROSS_FIELD_RULES
from nlray import config_fields
from nlray.config_fields import Bounds

ROOT = Path(__file__).resolve().parents[1]
# 40 examples a property keeps the file under a minute on 2 busy cores; NLRAY_HYPOTHESIS_EXAMPLES=1000 digs deeper.
SETTINGS = settings(max_examples=int(os.environ.get("NLRAY_HYPOTHESIS_EXAMPLES", 40)), deadline=None,
                    database=None, suppress_health_check=[HealthCheck.too_slow])
DEFAULTS = flatten(Config())  # every dotted key -> its default
DEMO_CROP = 64  # data.crop_size of the demo preset (nlray/configs/demo.yaml)
SECTIONS = [f.name for f in dataclasses.fields(Config) if dataclasses.is_dataclass(getattr(Config(), f.name))]


def field_types() -> dict[str, str]:
    """Dotted key -> the declared type as written in the dataclass (``int``, ``List[int]``, ...)."""
    out = {"name": "str"}
    for section in SECTIONS:
        for f in dataclasses.fields(getattr(Config(), section)):
            out[f"{section}.{f.name}"] = f.type
    return out


TYPES = field_types()
FIELDS = config_fields.settings()  # dotted key -> its dataclass field; .metadata: help, choices, bounds, note, check
ENUMS = {k: f.metadata["choices"] for k, f in FIELDS.items() if f.metadata.get("choices") is not None}
# Keys whose allowed values another key narrows (crop_size <= train_short_side[0], ...): their own tests below.
TIED = {key for keys, _rule in CROSS_FIELD_RULES for key in keys}
# Numeric keys whose allowed range does not depend on another key: key -> its declared Bounds.
RANGES = {k: f.metadata["bounds"] for k, f in FIELDS.items()
          if f.metadata.get("bounds") is not None and TYPES[k] in ("int", "float", "Optional[int]") and k not in TIED}


def in_range(key: str, value: float) -> bool:
    """``low < value`` (an open bound) or ``low <= value``, and ``value < high`` when there is one."""
    b: Bounds = RANGES[key]
    if not math.isfinite(value):
        return False
    above = value > b.low or (not b.open and value == b.low)
    return above and (b.high is None or value < b.high)


def outcome(overrides: list[str], key: str | tuple[str, ...]) -> Config | None:
    """The loaded Config (checked to round-trip through YAML), or None after checking the error names ``key``
    (one of ``key``)."""
    try:
        cfg = load_config("demo", overrides)
    except ConfigError as e:
        msg = str(e)
        assert "\n" not in msg and any(k in msg for k in ((key,) if isinstance(key, str) else key)), msg
        return None
    assert from_yaml(to_yaml(cfg)) == cfg
    return cfg


# --------------------------------------------------------------------------------- strategies

SAFE_TEXT = st.text(st.characters(codec="ascii", exclude_categories=["Cc"]), max_size=20)
PATHLIKE = st.text(st.sampled_from("abcXYZ019/:._-~"), min_size=1, max_size=20)
INT = st.integers(-10**6, 10**7)
FLOAT = st.floats(allow_nan=True, allow_infinity=True) | st.floats(-2, 2)
WORD = st.text(st.sampled_from("abcdefghijklmnopqrstuvwxyz"), min_size=2, max_size=8).filter(
    lambda w: w not in ("yes", "no", "on", "off", "null", "true", "false", "y", "n") and not _is_float(w))


def _is_float(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def value_text(type_: str) -> st.SearchStrategy[str]:
    """Values of the key's type and of others, as they would be typed on a command line."""
    any_value = st.one_of(INT.map(str), FLOAT.map(repr), WORD, PATHLIKE, SAFE_TEXT,
                          st.lists(INT, max_size=4).map(lambda v: f"[{','.join(map(str, v))}]"),
                          st.sampled_from(["true", "false", "null", "", "{a: 1}", "[[2,0]]", "???", "${nope}"]))
    typed = {"int": INT.map(str), "float": FLOAT.map(repr), "bool": st.sampled_from(["true", "false"]),
             "str": PATHLIKE}.get(type_, any_value)
    return st.one_of(typed, any_value)


@st.composite
def unknown_keys(draw) -> tuple[str, str]:
    """(a misspelt key, a real key it came from): one character of the field or section name changed."""
    real = draw(st.sampled_from([k for k in DEFAULTS if "." in k]))
    section, leaf = real.split(".")
    part = draw(st.sampled_from(["section", "leaf"]))
    word = section if part == "section" else leaf
    i = draw(st.integers(0, len(word) - 1))
    edit = draw(st.sampled_from(["insert", "delete", "replace"]))
    c = draw(st.sampled_from("abcdefghijklmnopqrstuvwxyz_"))
    word = {"insert": word[:i] + c + word[i:], "delete": word[:i] + word[i + 1:],
            "replace": word[:i] + c + word[i + 1:]}[edit]
    bad = f"{word}.{leaf}" if part == "section" else f"{section}.{word}"
    names = SECTIONS if part == "section" else [f.name for f in dataclasses.fields(getattr(Config(), section))]
    if not word or word in names:
        return draw(unknown_keys())
    return bad, real


# ------------------------------------------------------------------------------ dotted overrides


@SETTINGS
@given(key=st.sampled_from(sorted(DEFAULTS)), data=st.data())
def test_any_value_of_any_key_loads_and_round_trips_or_is_refused_in_one_line_naming_the_key(key, data):
    value = data.draw(value_text(TYPES[key]))
    outcome([f"{key}={value}"], key)


@SETTINGS
@given(key=st.sampled_from(sorted(RANGES)), number=st.one_of(INT, FLOAT))
def test_numbers_are_accepted_exactly_inside_their_documented_range(key, number):
    if TYPES[key] in ("int", "Optional[int]") and isinstance(number, float):
        number = int(number) if math.isfinite(number) else number
        if isinstance(number, float):  # inf/nan for an int key: a type error
            assert outcome([f"{key}={number!r}"], key) is None
            return
    cfg = outcome([f"{key}={number!r}"], key)
    assert (cfg is not None) == in_range(key, number), (key, number)
    if cfg is not None:
        assert get(cfg, key) == number


@SETTINGS
@given(key=st.sampled_from(sorted(ENUMS)), data=st.data())
def test_enumerated_keys_take_exactly_their_listed_values_and_the_error_lists_them(key, data):
    allowed = ENUMS[key]
    value = data.draw(st.sampled_from(allowed) | (INT if isinstance(allowed[0], int) else WORD))
    try:
        cfg = load_config("demo", [f"{key}={value}"])
    except ConfigError as e:
        assert value not in allowed and "\n" not in str(e) and key in str(e)
        assert all(str(a) in str(e) for a in allowed) or "type" in str(e)
        return
    assert value in allowed and get(cfg, key) == value


@SETTINGS
@given(key=st.sampled_from([k for k, t in TYPES.items() if t in ("int", "float", "bool")]), word=WORD)
def test_words_for_numbers_and_flags_are_refused_naming_the_type(key, word):
    with pytest.raises(ConfigError) as err:
        load_config("demo", [f"{key}={word}"])
    msg = str(err.value)
    assert "\n" not in msg and key in msg and f"type {TYPES[key]}" in msg


@SETTINGS
@given(key=st.sampled_from([k for k, t in TYPES.items() if t == "str"]),
       value=st.sampled_from(["[1, 2]", "{a: 1}", "null", "", "???", "${nope}"]))
def test_strings_refuse_lists_mappings_and_nothing(key, value):
    assert outcome([f"{key}={value}"], key) is None


@SETTINGS
@given(bad_real=unknown_keys(), value=st.sampled_from(["1", "x", "[1]"]))
def test_a_misspelt_key_is_refused_and_the_keys_allowed_there_are_listed(bad_real, value):
    bad, real = bad_real
    with pytest.raises(ConfigError) as err:
        load_config("demo", [f"{bad}={value}"])
    msg = str(err.value)
    assert "\n" not in msg and bad in msg
    section, leaf = real.split(".")
    assert (leaf if bad.split(".")[0] == section else section) in msg.split("Allowed keys here:")[-1]


@SETTINGS
@given(lo_hi=st.lists(st.integers(-10, 200), max_size=4))
def test_train_short_side_is_a_pair_from_the_crop_size_up(lo_hi):
    cfg = outcome([f"data.train_short_side=[{','.join(map(str, lo_hi))}]"], "data.train_short_side")
    assert (cfg is not None) == (len(lo_hi) == 2 and DEMO_CROP <= lo_hi[0] <= lo_hi[1])


@SETTINGS
@given(crop=st.integers(-10, 200), short=st.integers(-10, 200))
def test_crop_sizes_fit_their_shorter_sides(crop, short):
    cfg = outcome([f"data.crop_size={crop}"], "data.crop_size")
    assert (cfg is not None) == (0 < crop <= DEMO_CROP)  # the demo's train_short_side is [64, 80]
    cfg = outcome([f"data.eval_crop_size={crop}", f"data.eval_short_side={short}"], "data.eval_")
    assert (cfg is not None) == (0 < crop <= short)


@SETTINGS
@given(actors=st.integers(-2, 12), most=st.integers(-2, 12))
def test_a_decoder_pool_grows_from_at_least_one_actor_or_stays_fixed(actors, most):
    cfg = outcome([f"data.decode_actors={actors}", f"data.decode_actors_max={most}"], "data.decode_actors")
    assert (cfg is not None) == (actors >= 1 and (most == 0 or most >= actors))


@SETTINGS
@given(workers=st.integers(-1, 4), batch=st.integers(-1, 8), global_batch=st.integers(-1, 64))
def test_a_global_batch_is_a_whole_number_of_worker_batches(workers, batch, global_batch):
    keys = ("train.num_workers", "data.batch_size", "train.global_batch")
    cfg = outcome([f"{k}={v}" for k, v in zip(keys, (workers, batch, global_batch))], keys)
    ok = workers >= 1 and batch >= 1 and global_batch >= 0 and global_batch % (workers * batch) == 0
    assert (cfg is not None) == ok


def test_every_setting_is_declared_with_help_and_every_number_with_its_allowed_values():
    assert "model.test_head" in ENUMS and set(RANGES) | TIED | set(ENUMS) >= {
        k for k, t in TYPES.items() if t in ("int", "float", "Optional[int]")}
    assert set(TIED) <= set(FIELDS) and not [k for k, f in FIELDS.items() if not f.metadata.get("help")]


@SETTINGS
@given(pairs=st.lists(st.lists(st.integers(-1, 6), min_size=1, max_size=3), max_size=3),
       depths=st.lists(st.integers(0, 3), min_size=3, max_size=5))
def test_stage_depths_and_nonlocal_placement_are_checked_before_any_model_is_built(pairs, depths):
    cfg = outcome([f"model.stage_depths={depths}", f"model.nonlocal_placement={pairs}"], "model.")
    depths_ok = len(depths) == 4 and min(depths) >= 1
    placement_ok = depths_ok and all(len(p) == 2 and 2 <= p[0] <= 5 and 0 <= p[1] < depths[p[0] - 2] for p in pairs)
    assert (cfg is not None) == placement_ok


@SETTINGS
@given(name=st.text(max_size=12))
def test_a_run_name_is_one_safe_folder_name(name):
    cfg = outcome([f"name='{name}'"] if "'" not in name else [f'name="{name}"'], "name")
    plain = all(c.isalnum() or c in "_.-" for c in name) and (not name or name[0].isalnum() or name[0] == "_")
    if cfg is not None and name:
        assert plain and cfg.name == name


@pytest.mark.parametrize("override, words", [
    ("train.base_lr=-0.1", ["train.base_lr", "> 0"]),
    ("train.base_lr=nan", ["train.base_lr", "finite"]),
    ("model.dropout=1.0", ["model.dropout", "[0, 1)"]),
    ("name=", ["name", "str"]),
    ("name=a/b", ["name", "letters"]),
    ("data.train_short_side=[256]", ["data.train_short_side", "[lo, hi]"]),
    ("data.train_short_side=256", ["data.train_short_side", "List[int]"]),
    ("model=3", ["'model'", "arch"]),
    ("model.stage_depths=[[1],2,3,4]", ["model.stage_depths", "4 integers"]),
    ("train.lr_milestones=[1,[2]]", ["train.lr_milestones"]),
    ("data.root=${nope}", ["data.root", "nope"]),
    ("data.root=???", ["data.root", "'???'"]),
    ("data.root=\x00", ["data.root"]),
    ("model.nonlocal_placement=[[9,0]]", ["model.nonlocal_placement", "stage 2..5"]),
    ("data.shuffle_seed=-1", ["data.shuffle_seed", ">= 0"]),
])
def test_values_found_invalid_are_refused_naming_key_and_allowed(override, words):
    with pytest.raises(ConfigError) as err:
        load_config("demo", [override])
    assert "\n" not in str(err.value)
    for word in words:
        assert word in str(err.value)


def test_a_literal_dollar_brace_survives_the_yaml_round_trip():
    cfg = load_config("demo", ["data.root=\\${not_an_interpolation}"])
    assert cfg.data.root == "${not_an_interpolation}" and from_yaml(to_yaml(cfg)) == cfg


# ----------------------------------------------------------------------------------- preset files

PRESET_DIR = tempfile.TemporaryDirectory(prefix="nlray-presets-")


def write_preset(text: str, name: str = "p.yaml") -> str:
    path = Path(PRESET_DIR.name) / name
    path.write_text(text)
    return str(path)


YAML_VALUE = st.one_of(st.integers(-5, 400), st.floats(allow_nan=False, width=32), st.booleans(), st.none(),
                       PATHLIKE, st.lists(st.integers(-1, 300), max_size=4), st.sampled_from(ENUMS["model.arch"]))


@SETTINGS
@given(key=st.sampled_from(sorted(k for k in DEFAULTS if "." in k)), value=YAML_VALUE)
def test_a_preset_file_loads_and_round_trips_or_is_refused_naming_the_key(key, value):
    section, leaf = key.split(".")
    path = write_preset(yaml.safe_dump({"base": "demo", section: {leaf: value}}))
    try:
        cfg = load_config(path)
    except ConfigError as e:
        assert "\n" not in str(e) and (key in str(e) or leaf in str(e)), str(e)
        return
    assert from_yaml(to_yaml(cfg)) == cfg


@pytest.mark.parametrize("text, words", [
    ("model: {archx: c2d}\n", ["model.archx", "nl_instantiation"]),
    ("train: {steps: many}\n", ["train.steps", "int"]),
    ("data: {train_short_side: 256}\n", ["data.train_short_side", "List[int]"]),
    ("data: {flip_label_map: 3}\n", ["data.flip_label_map", "List[List[str]]"]),
    ("model: 3\n", ["'model'", "arch"]),
    ("modle: {arch: c2d}\n", ["modle", "model"]),
    ("- a\n- b\n", ["mapping"]),
    ("model: {arch: [c2d\n", ["not valid YAML"]),
    ("base: [demo]\n", ["base", "preset name"]),
    ("base: no_such_preset\n", ["no_such_preset", "nl_i3d_r50_32f"]),
    ("base: demo\ntrain: {base_lr: -1}\n", ["train.base_lr", "> 0"]),
])
def test_bad_preset_files_are_refused_in_one_line(text, words):
    with pytest.raises(ConfigError) as err:
        load_config(write_preset(text))
    assert "\n" not in str(err.value)
    for word in words:
        assert word in str(err.value)


def test_a_preset_extends_one_base_found_beside_it_and_no_chain():
    write_preset("base: demo\ntrain: {steps: 7}\n", "parent.yaml")
    child = write_preset("base: parent.yaml\ndata: {batch_size: 2}\n", "child.yaml")
    with pytest.raises(ConfigError, match="one level only"):
        load_config(child)  # child -> parent -> demo: a chain is refused
    write_preset("train: {steps: 7}\n", "parent.yaml")
    cfg = load_config(child)  # a relative base is read from the child's folder, whatever the cwd
    assert cfg.train.steps == 7 and cfg.data.batch_size == 2 and from_yaml(to_yaml(cfg)) == cfg


# ------------------------------------------------------------------------------- the command line


@pytest.mark.parametrize("args, key", [
    (["train.base_lr=-1"], "train.base_lr"),
    (["model.nope=1"], "model.nope"),
    (["--config", "PRESET"], "train.steps"),  # a preset file with a wrong type
])
def test_a_bad_job_command_line_exits_2_with_one_line_before_ray_starts(tmp_path, args, key):
    preset = tmp_path / "bad.yaml"
    preset.write_text("base: demo\ntrain: {steps: many}\n")
    args = [str(preset) if a == "PRESET" else a for a in args]
    # Everything a run that got through would write lands in tmp_path; RAY_ADDRESS names nothing, so such a
    # run would fail to connect instead of starting a local Ray and training.
    env = {**os.environ, "HOME": str(tmp_path), "RAY_ADDRESS": "127.0.0.1:9", "NLRAY_STORAGE": str(tmp_path / "r"),
           "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'm.db'}"}
    start = time.monotonic()
    proc = subprocess.run([sys.executable, str(ROOT / "jobs" / "train.py"), *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)
    took = time.monotonic() - start
    assert proc.returncode == 2, proc.stderr[-2000:]
    out = proc.stdout + proc.stderr
    assert "Traceback" not in out and "Ray instance" not in out and "Connecting to existing Ray" not in out
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and errors[0] == proc.stderr.strip().splitlines()[-1]
    assert errors[0].startswith("train.py: error: ") and key in errors[0]
    assert took < 30 and not (tmp_path / "m.db").exists()
