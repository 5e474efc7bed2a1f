"""nlray.ablation and jobs/ablate.py, jobs/report.py: the paper's tables as data, the t-interval, and two tables
run end to end (2 rows x 1 seed each, tiny runs) as Ray Tune trials on a local Ray, data on a moto S3 endpoint,
tracking on an `mlflow server`; every check reads back through MlflowClient."""
from __future__ import annotations

import importlib.util
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from nlray import choices
from nlray.ablation.report import Report, ReportRow
from nlray.ablation.runner import make_plan, trials
from nlray.ablation.runs import Spec, SpecRow
from nlray.ablation.stats import t_interval
from nlray.ablation.tables import LONG_CLIP, TABLES, placement, row_overrides
from nlray.config import ConfigError, load_config
from tiny import TINY

ROOT = Path(__file__).resolve().parents[1]
PAPER_PRESETS = ["c2d_r50_32f", "nl_i3d_r50_32f", "nl_i3d_r101_32f"]


def load_job(name: str):
    spec = importlib.util.spec_from_file_location(f"job_{name}", ROOT / "jobs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- the interval ---------------------------------------------------------------------------------------

def test_t_interval_matches_the_textbook_critical_values():
    # n=3: mean 0.5, s = 0.1, t_{0.975,2} = 4.303 (any t table): half width 4.303 * 0.1 / sqrt(3)
    iv = t_interval([0.4, 0.5, 0.6])
    assert iv.mean == pytest.approx(0.5) and iv.n == 3
    assert iv.half_width == pytest.approx(4.303 * 0.1 / 3 ** 0.5, rel=1e-3)
    # n=2: t_{0.975,1} = 12.706, s = |a-b|/sqrt(2)
    assert t_interval([0.70, 0.72]).half_width == pytest.approx(12.706 * 0.02 / 2 ** 0.5 / 2 ** 0.5, rel=1e-3)
    assert t_interval([0.3, 0.3, 0.3, 0.3]).half_width == 0.0


def test_one_seed_reports_the_value_and_n_equals_1():
    iv = t_interval([0.725])
    assert iv.half_width is None and iv.text() == "72.5 (n=1)"
    assert t_interval([0.4, 0.5, 0.6]).text() == "50.0 ± 24.8"
    with pytest.raises(ValueError, match="at least one"):
        t_interval([])


# --- the report, without MLflow -------------------------------------------------------------------------

def test_a_row_without_seeds_or_paper_figure_is_a_gap_in_the_table_and_the_chart(tmp_path):
    rows = [SpecRow("c2d", "C2D", 71.8, "2a R50", []), SpecRow("new", "new row", None, "", [])]
    spec = Spec("2a", "title", "", "demo", "t", "exp", [0, 1], rows)
    report = Report("parent", spec, [ReportRow(rows[0], [0.5, 0.6], t_interval([0.5, 0.6])),
                                     ReportRow(rows[1], [], None)])
    assert "| new row | — | — | 0 |" in report.markdown() and not report.complete
    assert report.chart_png(tmp_path / "table.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --- the tables -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("base", ["demo", *PAPER_PRESETS])
def test_every_row_of_every_table_loads_on_the_base(base):
    base_cfg = load_config(base)
    distinct = {tuple(row_overrides(row, base_cfg)) for table in TABLES.values() for row in table.rows}
    for overrides in distinct:
        cfg = load_config(base, list(overrides))  # validates: the placement fits the layout
        assert cfg.model.depth == base_cfg.model.depth  # rows never change the backbone's depth


def test_rows_on_the_paper_layout_use_its_placements_and_on_demo_the_documented_mapping():
    paper, demo = load_config("c2d_r50_32f"), load_config("demo")
    row = TABLES["2c"].row("5block")
    assert load_config("c2d_r50_32f", row_overrides(row, paper)).model.nonlocal_blocks == 5
    assert load_config("demo", row_overrides(row, demo)).model.nonlocal_placement == [[3, 0], [4, 0]]
    one = row_overrides(TABLES["2a"].row("gaussian"), demo)
    assert load_config("demo", one).model.nonlocal_placement == [[4, 0]]
    assert load_config("demo", row_overrides(TABLES["2a"].row("c2d"), demo)).model.nonlocal_placement == []
    # docs/paper.md "Placement" written out: the general rules reproduce the R50 tables
    r50 = list(choices.STAGE_DEPTHS[50])
    assert placement("1", r50) == [[4, 4]]
    assert placement("5", r50) == [[3, 1], [3, 3], [4, 1], [4, 3], [4, 5]]
    assert len(placement("10", r50)) == 10 and placement("res2", r50) == [[2, 1]]


@pytest.mark.parametrize("base, long_preset, layout", [("demo", "demo_128f", "shrunk"),
                                                       ("nl_i3d_r50_32f", "nl_i3d_r50_128f", "paper"),
                                                       ("c2d_r50_32f", "c2d_r50_128f", "paper")])
def test_long_clip_rows_follow_the_long_clip_presets(base, long_preset, layout):
    mine, theirs = load_config(base, list(LONG_CLIP[layout])), load_config(long_preset)
    assert (mine.data, mine.train, mine.model) == (theirs.data, theirs.train, theirs.model)


def test_paper_figures_follow_the_base_depth():
    r50, r101 = make_plan("3", "c2d_r50_32f", 1), make_plan("3", "c2d_r101_32f", 1)
    assert [(r.paper, r.source) for r in r50.spec.rows] == [
        (71.8, "2a R50"), (73.3, "2f R50"), (73.8, "2c R50"), (74.9, "2f R50")]
    assert [r.paper for r in r101.spec.rows] == [73.1, 74.4, 75.1, 76.0]
    assert make_plan("2e", "c2d_r50_32f", 1).spec.rows[1].paper is None  # no R50 I3D 3x3x3 in docs/paper.md


def test_plan_names_seeds_and_tags_every_child():
    plan = make_plan("2g", "demo", 2, ["train.steps=4"], rows=["nl_i3d_128f"], name="abl")
    assert [r.name for r in plan.spec.rows] == ["nl_i3d_32f", "nl_i3d_128f"]  # the 32x2 row it starts from
    cfg = plan.configs[("nl_i3d_128f", 1)]
    assert cfg.name == "abl-nl_i3d_128f-s1" and cfg.train.seed == 1 and cfg.train.steps == 4
    assert cfg.tracking.tags == {"row": "nl_i3d_128f", "seed": "1", "table": "2g"}
    assert cfg.data.frames == 64 and cfg.data.frame_stride == 1 and cfg.train.freeze_bn


def test_only_unfinished_rows_and_seeds_become_trials():
    plan = make_plan("2g", "demo", 2, rows=["c2d_128f"], name="abl")  # c2d_32f -> c2d_128f, seeds 0 and 1
    done = {("c2d_32f", 0): ("run32", 0.5)}
    grid = trials(plan, "parent", done)
    assert [t["key"] for t in grid] == ["c2d_32f-s0", "c2d_32f-s1"]
    assert [s["row"] for s in grid[0]["steps"]] == ["c2d_32f", "c2d_128f"]
    assert grid[0]["done"] == {"c2d_32f": "run32"}  # seed 0: the 128x1 step starts from the finished 32x2 run
    assert grid[1]["done"] == {} and grid[1]["steps"][1]["init_from"] == "c2d_32f"
    assert "parent_run: parent" in grid[1]["steps"][0]["cfg_yaml"]
    done[("c2d_128f", 0)] = ("run128", 0.6)
    assert [t["key"] for t in trials(plan, "parent", done)] == ["c2d_32f-s1"]  # seed 0 finished: no trial


def test_a_narrower_rerun_keeps_the_rows_and_seeds_the_parent_has():
    wide = make_plan("2a", "demo", 3, name="abl").spec
    narrow = make_plan("2a", "demo", 1, rows=["dot_product"], name="abl").spec
    merged = narrow.merged(Spec.from_json(wide.to_json()))  # as read back from the parent's ablation.json
    assert merged.seeds == [0, 1, 2]
    assert [r.name for r in merged.rows] == [r.name for r in TABLES["2a"].rows]  # in the table's order


def test_an_override_of_a_key_the_rows_vary_is_refused():
    with pytest.raises(ConfigError, match="model.nl_instantiation"):
        make_plan("2a", "demo", 1, ["model.nl_instantiation=dot_product"])
    make_plan("2a", "demo", 1, ["model.arch=i3d"])  # every row of 2a is C2D: the whole table may move
    with pytest.raises(ValueError, match="no row 'nope'"):
        make_plan("2a", "demo", 1, rows=["nope"])


def test_ablate_refuses_bad_input_before_asking_ray_or_mlflow(capsys):
    for args, words in ((["2a", "model.nl_instantiation=dot_product"], ["model.nl_instantiation", "vary"]),
                        (["2b", "--rows", "res6"], ["res6", "res5"]),
                        (["2c", "--seeds", "0"], ["--seeds"])):
        with pytest.raises(SystemExit) as e:
            load_job("ablate").main(args)
        err = capsys.readouterr().err
        assert e.value.code == 2 and all(w in err for w in words), err


def test_jobs_have_help(capsys):
    for job in ("ablate", "report"):
        with pytest.raises(SystemExit) as e:
            load_job(job).main(["--help"])
        assert e.value.code == 0
    out = capsys.readouterr().out
    assert "2g" in out and "--seeds" in out and "parent" in out


# --- end to end -----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def env(ray_local, s3_data, mlflow_server, tmp_path_factory):
    root = tmp_path_factory.mktemp("ablate")
    # TINY runs, 4 steps, 1 worker (so that both trials of a table fit the session's 4 CPUs at once), 1 eval clip
    common = ["--base", "demo", "--seeds", "1", "--data", s3_data, *TINY, "train.steps=4", "train.num_workers=1",
              "data.eval_num_clips=1", f"tracking.uri={mlflow_server}", "tracking.experiment=t-ablate",
              f"train.storage_path={root / 'results'}", f"data.cache_dir={root / 'cache'}"]
    return {"common": common, "uri": mlflow_server, "root": root, "ablate": load_job("ablate")}


def children(uri: str, parent: str) -> dict:
    client = MlflowClient(uri)
    exp = client.get_run(parent).info.experiment_id
    runs = client.search_runs([exp], f"tags.mlflow.parentRunId = '{parent}'")
    return {r.info.run_name: r for r in runs}


@pytest.fixture(scope="module")
def tables(env):
    """{table: parent run id}: 2a (C2D, embedded Gaussian) and 3 (C2D, NL I3D), 1 seed."""
    ablate, common = env["ablate"], env["common"]
    return {"2a": ablate.main(["2a", "--rows", "c2d,embedded_gaussian", "--name", "t2a", *common]),
            "3": ablate.main(["3", "--rows", "c2d,nl_i3d", "--name", "t3", *common])}


def test_children_are_nested_under_one_parent_per_table_with_row_and_seed(env, tables):
    parents = tables
    client = MlflowClient(env["uri"])
    for table, rows in (("2a", ["c2d", "embedded_gaussian"]), ("3", ["c2d", "nl_i3d"])):
        parent = client.get_run(parents[table])
        assert parent.info.status == "FINISHED" and parent.info.run_name == f"t{table}"
        assert {k: parent.data.tags[k] for k in ("table", "base", "seeds")} == {
            "table": table, "base": "demo", "seeds": "1"}
        kids = children(env["uri"], parents[table])
        assert sorted(kids) == sorted(f"t{table}-{r}-s0" for r in rows)
        for row in rows:
            run = kids[f"t{table}-{row}-s0"]
            assert run.info.status == "FINISHED" and "val/video_top1" in run.data.metrics
            assert run.data.tags["row"] == row and run.data.tags["seed"] == "0"
            assert run.data.params["train.seed"] == "0" and run.data.params["train.steps"] == "4"
    kids = children(env["uri"], parents["3"])
    assert kids["t3-c2d-s0"].data.params["model.arch"] == "c2d"
    assert kids["t3-nl_i3d-s0"].data.params["model.nonlocal_placement"] == "[[3, 0], [4, 0]]"


def test_the_table_is_rebuilt_from_mlflow_alone(env, tables, capsys):
    parents = tables
    client = MlflowClient(env["uri"])
    for table, parent in parents.items():
        fresh = load_job("report").main([parent, "--tracking-uri", env["uri"], "--no-log"])
        logged = Path(client.download_artifacts(parent, "table.md", str(env["root"]))).read_text()
        assert fresh == logged
        kids = children(env["uri"], parent)
        for name, run in kids.items():  # 1 seed: the child's own value, n=1
            assert f"{run.data.metrics['val/video_top1'] * 100:.1f} (n=1) | 1 |" in fresh
        arts = {a.path for where in (None, "plots") for a in client.list_artifacts(parent, where)}
        assert {"table.md", "table.csv", "plots/table.png", "ablation.json"} <= arts
    assert "| C2D | 71.8 (2a R50) |" in fresh and "| NL I3D, 5-block | 74.9 (2f R50) |" in fresh  # last: table 3
    csv_text = Path(client.download_artifacts(parents["3"], "table.csv", str(env["root"]))).read_text()
    assert csv_text.splitlines()[0].startswith("row,label,paper_top1,paper_source,mean_top1")
    assert csv_text.splitlines()[1].startswith("c2d,C2D,71.80,2a R50,")


def test_running_the_same_table_again_reruns_nothing(env, tables):
    parents = tables
    before = {n: r.info.end_time for n, r in children(env["uri"], parents["2a"]).items()}
    start = time.monotonic()
    again = env["ablate"].main(["2a", "--rows", "c2d,embedded_gaussian", "--name", "t2a", *env["common"]])
    took = time.monotonic() - start
    after = {n: r.info.end_time for n, r in children(env["uri"], again).items()}
    assert again == parents["2a"] and after == before  # same parent, same children, none run again
    assert took < 30, f"a finished table took {took:.1f}s to report"
