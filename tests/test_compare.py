"""nlray.compare and jobs/compare.py: two finished runs made through nlray.tracking in a real sqlite store,
found by name and by id, side by side."""
import csv
import importlib.util
import io
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from nlray import compare, tracking
from nlray.config import load_config

ROOT = Path(__file__).resolve().parents[1]
LOSS_A, LOSS_B = [2.0, 1.5, 1.25], [2.0, 1.0, 0.5]


def job():
    spec = importlib.util.spec_from_file_location("job_compare", ROOT / "jobs" / "compare.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def finished_run(uri: str, name: str, overrides: list[str], losses: list[float], val: dict) -> tracking.Run:
    cfg = load_config("demo", [f"name={name}", f"tracking.uri={uri}", "tracking.experiment=t-compare", *overrides])
    run, _ = tracking.start_or_resume_run(cfg, ["x", "y"], {"world_size": 2})
    for step, loss in enumerate(losses):
        run.log_metrics({"train/loss": loss, "train/clip_top1": 0.25 * step}, step * 10)
    run.log_metrics(val, 20)
    run.end()
    return run


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """(uri, run a, run b): two finished runs of different instantiations and schedules."""
    root = tmp_path_factory.mktemp("compare-store")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    for exp in ("t-compare", "t-compare-2"):  # artifacts in the test's folder, not ./mlruns
        MlflowClient(uri).create_experiment(exp, artifact_location=str(root / exp))
    a = finished_run(uri, "cmp-a", ["model.nl_instantiation=gaussian", "train.steps=30"], LOSS_A,
                     {"val/video_top1": 0.5, "val/video_top5": 1.0, "val/clip_top1": 0.375})
    b = finished_run(uri, "cmp-b", ["model.nl_instantiation=dot_product", "train.steps=40"], LOSS_B,
                     {"val/video_top1": 0.75, "val/video_top5": 1.0})  # no clip_top1 logged
    return uri, a, b


def test_runs_by_name_and_by_id_side_by_side(store):
    uri, a, b = store
    comparison = compare.compare(uri, ["cmp-a", b.id])
    rows = comparison.rows()
    assert [(r["run"], r["id"]) for r in rows] == [("cmp-a", a.id[:8]), ("cmp-b", b.id[:8])]
    assert [r["model.nl_instantiation"] for r in rows] == ["gaussian", "dot_product"]
    assert [r["train.steps"] for r in rows] == ["30", "40"]
    assert [r["val/video_top1"] for r in rows] == ["0.5000", "0.7500"]
    assert [r["val/clip_top1"] for r in rows] == ["0.3750", compare.MISSING]
    assert [r["final train/loss"] for r in rows] == ["1.2500", "0.5000"]  # the last logged, not the least
    assert [r["status"] for r in rows] == ["FINISHED", "FINISHED"]

    common = comparison.common()
    assert common["model.arch"] == "i3d"  # nlray/configs/demo.yaml
    assert common["world_size"] == "2" and "train.steps" not in common
    head, _, table = comparison.markdown().partition("\n\n")
    assert head.startswith("same in all runs: ") and "world_size=2" in head and "train.steps" not in head
    assert "| world_size |" not in table and "train.steps" in table.splitlines()[0]


def test_the_newest_run_of_a_name_is_taken(store):
    uri, _, _ = store
    older = finished_run(uri, "cmp-twice", [], [3.0], {})
    newer = finished_run(uri, "cmp-twice", ["tracking.experiment=t-compare-2"], [3.0], {})  # same name, elsewhere
    assert compare.resolve_runs(uri, ["cmp-twice"]) == [newer]
    assert compare.resolve_runs(uri, [older.id]) == [older]


def test_an_unknown_run_is_an_error_naming_it(store):
    uri, _, _ = store
    with pytest.raises(compare.UnknownRunError, match="'no-such-run'"):
        compare.resolve_runs(uri, ["cmp-b", "no-such-run"])


def test_the_job_prints_and_saves_the_table_and_the_curves(store, tmp_path, capsys):
    uri, a, b = store
    text = job().main([a.id, b.id, "--tracking-uri", uri, "--out", str(tmp_path / "cmp")])
    assert capsys.readouterr().out.startswith(text)
    assert (tmp_path / "cmp" / "table.md").read_text() == text
    rows = list(csv.DictReader(io.StringIO((tmp_path / "cmp" / "table.csv").read_text())))
    assert [r["final train/loss"] for r in rows] == ["1.2500", "0.5000"]
    assert rows[1]["val/clip_top1"] == "" and rows[0]["world_size"] == "2"  # the CSV keeps every column
    assert (tmp_path / "cmp" / "learning_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_job_defaults_its_folder_to_the_first_run_id(store, tmp_path, monkeypatch):
    uri, a, _ = store
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # as every job reads it
    job().main(["cmp-b", a.id])
    b = compare.resolve_runs(uri, ["cmp-b"])[0]
    assert (tmp_path / f"compare-{b.id[:8]}" / "table.csv").is_file()


def test_the_job_exits_2_naming_an_unknown_run(store, capsys):
    uri, _, _ = store
    with pytest.raises(SystemExit) as e:
        job().main(["cmp-a", "no-such-run", "--tracking-uri", uri])
    assert e.value.code == 2 and "'no-such-run'" in capsys.readouterr().err


def test_help():
    out = subprocess.run([sys.executable, "jobs/compare.py", "--help"], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "usage:" in out.stdout and "RUN_OR_NAME" in out.stdout and "--tracking-uri" in out.stdout
