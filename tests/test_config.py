"""nlray.config: presets, overrides, validation errors that name the key and the allowed values."""
import pytest

import nlray.config
from nlray.config import (Config, ConfigError, check_config, describe, flatten, from_yaml, load_config, preset_names,
                          to_yaml)

PAPER_PRESETS = ["c2d_r50_32f", "i3d_r50_32f", "i3d3x3x3_r50_32f", "nl_c2d_r50_32f", "nl_i3d_r50_32f",
                 "nl_i3d_r50_128f", "nl_c2d_r50_32f_1block", "nl_c2d_r50_32f_10block", "c2d_r101_32f",
                 "i3d_r101_32f", "nl_c2d_r101_32f", "nl_i3d_r101_32f", "nl_i3d_r101_128f", "demo", "demo_128f"]


def test_every_paper_preset_exists_and_loads():
    assert set(PAPER_PRESETS) <= set(preset_names())
    for name in preset_names():
        load_config(name)


def test_presets_follow_the_paper_recipe():
    short, long = load_config("nl_i3d_r50_32f"), load_config("nl_i3d_r50_128f")
    assert (short.data.frames, short.data.frame_stride) == (32, 2)
    assert (long.data.frames, long.data.frame_stride) == (128, 1)  # consecutive frames
    assert long.train.freeze_bn and not short.train.freeze_bn  # BN frozen only for long clips
    assert long.train.base_lr == 0.0025 and long.train.base_batch == 16
    assert short.train.base_lr == 0.01 and short.train.base_batch == 64
    assert short.train.lr_milestones == [150_000, 300_000] and short.train.steps == 400_000
    assert (short.model.arch, short.model.nonlocal_blocks) == ("i3d", 5)
    assert load_config("nl_c2d_r50_32f_10block").model.nonlocal_blocks == 10
    assert load_config("c2d_r101_32f").model.depth == 101


def test_dotted_overrides_apply_in_order():
    cfg = load_config("nl_i3d_r50_32f", ["train.steps=10", "model.nl_mode=space", "data.train_short_side=[224,256]"])
    assert cfg.train.steps == 10 and cfg.model.nl_mode == "space"
    assert cfg.data.train_short_side == [224, 256]


@pytest.mark.parametrize("override, words", [
    ("model.archx=c2d", ["model.archx", "arch"]),  # unknown key: named, allowed keys listed
    ("model.arch=c3d", ["model.arch", "c3d", "c2d", "i3d3x3x3"]),  # bad choice: value and choices named
    ("model.nl_instantiation=cosine", ["cosine", "embedded_gaussian", "concatenation"]),
    ("train.steps=many", ["train.steps", "many"]),
    ("data.frames=0", ["data.frames", "> 0"]),
    ("data.train_short_side=[32,48]", ["train_short_side", "crop_size"]),
    ("data.eval_crop_size=96", ["eval_crop_size", "eval_short_side"]),
    ("nonsense=1", ["nonsense", "model", "train"]),
    ("train.steps", ["section.key=value"]),
])
def test_bad_overrides_name_the_key_and_allowed_values(override, words):
    with pytest.raises(ConfigError) as err:
        load_config("demo", [override])
    for word in words:
        assert word in str(err.value)


def test_unknown_preset_lists_presets():
    with pytest.raises(ConfigError, match="nl_i3d_r50_128f"):
        load_config("nl_i3d_r50_64f")


@pytest.mark.parametrize("typo, meant", [("nl_i3d_r50_32", "nl_i3d_r50_32f"), ("dmeo", "demo"),
                                         ("i3d_r101_128", "i3d_r101_128f"), ("caffe", "caffe2")])
def test_a_mistyped_preset_suggests_the_closest_name(typo, meant):
    with pytest.raises(ConfigError, match=f"Did you mean '{meant}'"):
        load_config(f"demo,{typo}" if meant == "caffe2" else typo)


def test_a_name_like_no_preset_suggests_nothing():
    with pytest.raises(ConfigError) as err:
        load_config("kinetics")
    assert "Did you mean" not in str(err.value) and "Presets:" in str(err.value)


def test_yaml_round_trip_and_flatten():
    cfg = load_config("nl_i3d_r50_128f", ["name=x"])
    assert from_yaml(to_yaml(cfg)) == cfg
    flat = flatten(cfg)
    assert flat["model.arch"] == "i3d" and flat["data.frames"] == 128 and flat["name"] == "x"


def test_preset_from_a_path_with_one_base(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("base: nl_i3d_r50_32f\nmodel: {nl_instantiation: dot_product}\n")
    cfg = load_config(str(path))
    assert cfg.model.nl_instantiation == "dot_product" and cfg.model.nonlocal_blocks == 5
    path.write_text("base: nl_c2d_r50_32f_1block\n")  # a base with a base: refused, one level only
    with pytest.raises(ConfigError, match="one level"):
        load_config(str(path))


def test_cluster_wide_defaults_from_the_environment_sit_between_preset_and_command_line(monkeypatch):
    monkeypatch.setenv("NLRAY_STORAGE", "s3://b/results")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://head:5000")
    monkeypatch.setenv("NLRAY_DECODE_RESOURCE", "nlray_decode")
    cfg = load_config("demo")  # the demo preset names a local storage_path: the cluster's wins
    assert cfg.train.storage_path == "s3://b/results" and cfg.tracking.uri == "http://head:5000"
    assert cfg.cluster.decode_resource == "nlray_decode" and cfg.cluster.train_resource == "auto"
    assert load_config("demo", ["train.storage_path=/x"]).train.storage_path == "/x"  # the command line wins
    monkeypatch.delenv("NLRAY_STORAGE")
    assert load_config("demo").train.storage_path == "~/.cache/nlray/results"


def test_node_local_paths_are_named_with_their_fix():
    from nlray.raycluster import node_local_settings

    local = load_config("demo", ["train.storage_path=/r", "tracking.uri=sqlite:///m.db", "data.root=/d"])
    problems = node_local_settings(local)
    assert [p.split("=")[0] for p in problems] == ["train.storage_path", "tracking.uri", "data.root"]
    assert "s3://BUCKET" in problems[0] and "http://HEAD:5000" in problems[1] and "--data s3://" in problems[2]
    shared = load_config("demo", ["train.storage_path=s3://b/r", "tracking.uri=http://h:5000", "data.root=s3://b/d"])
    assert node_local_settings(shared) == []
    nfs = load_config("demo", ["train.storage_path=/nfs/r", "cluster.shared_filesystem=true"])
    assert node_local_settings(nfs) == []


def test_a_decoder_pool_cannot_shrink_below_its_minimum():
    with pytest.raises(ConfigError, match="data.decode_actors_max=2 must be 0"):
        load_config("demo", ["data.decode_actors=4", "data.decode_actors_max=2"])


def test_each_setting_is_described_from_its_one_declaration():
    lines = describe()
    assert [line.split(":")[0] for line in lines] == list(flatten(Config()))
    head = next(line for line in lines if line.startswith("model.test_head"))
    assert head.startswith("model.test_head: str = 'pool'  pool (average")
    assert head.endswith("[one of ['pool', 'conv']]")
    assert describe(["train.momentum"]) == ["train.momentum: float = 0.9  SGD momentum [in [0, 1)]"]
    with pytest.raises(ConfigError, match=r"Allowed: a value of type int, > 0\.$"):
        load_config("demo", ["data.frames=many"])  # a type error says the range too


def test_the_config_check_is_check_config_not_validate():
    cfg = load_config("demo")
    cfg.train.momentum = 1.0
    with pytest.raises(ConfigError, match=r"train.momentum=1.0 must be in \[0, 1\)"):
        check_config(cfg)
    assert not hasattr(nlray.config, "validate")  # trainer.validate is the validation split
