"""Run an ablation table: every (row, seed) a Ray Tune trial whose function calls fit(), which launches its
own Ray Train run (Ray 2.60's documented Train-inside-Tune pattern, Train V2).

    plan = make_plan("2a", "demo", seeds=3, overrides=["train.steps=400"])
    report = run_table(plan)           # parent run, trials (finished ones skipped), report logged

A trial reserves almost nothing (TRIAL_RESOURCES): it only drives fit(); the workers and decoders fit()
starts ask the cluster for their own resources. How many trials run at once is ``max_concurrent``
(default: as many as the cluster's resources hold whole training runs, at least 1).
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import ray
from ray import tune

from nlray import raycluster, tracking
from nlray.ablation.report import Report, build_report, log_report
from nlray.ablation.runs import Spec, SpecRow, child_name, finished_children, open_parent
from nlray.ablation.tables import (LAYOUT_NOTE, ROW_KEYS, Row, Table, get_table, is_shrunk, paper_figure,
                                   row_overrides, select_rows)
from nlray.config import (NAME_PATTERN, Config, ConfigError, apply_overrides, check_config, from_yaml, get,
                          load_config, to_yaml)
from nlray.train import checkpoint
from nlray.train.trainer import fit, worker_resources

log = logging.getLogger("nlray")

# Tune cannot place a trial that asks for nothing (an empty placement-group bundle); this much CPU is
# nothing in practice, and leaves every whole CPU to the Train workers and decoders fit() starts.
TRIAL_RESOURCES = {"CPU": 0.01}
NEW_OUTPUT_ENV = "RAY_AIR_NEW_OUTPUT"


@dataclass(frozen=True)
class Step:
    """One fit() of a trial: a row at a seed."""

    row: str
    name: str  # the child run's name
    cfg_yaml: str
    init_from: str = ""  # a row of the same trial whose run id becomes train.init_from


@dataclass(frozen=True)
class Plan:
    table: Table
    base: str
    spec: Spec
    base_cfg: Config  # the base preset with the command line's overrides (tracking, storage, cluster)
    configs: dict[tuple[str, int], Config]  # (row, seed) -> the child's config (parent_run not yet set)
    max_concurrent: int = 0  # 0: auto


def make_plan(table_name: str, base: str, seeds: int, overrides: Sequence[str] = (), *, data: Optional[str] = None,
              name: Optional[str] = None, rows: Sequence[str] = (), max_concurrent: int = 0) -> Plan:
    """Every row's config at every seed, validated before anything is asked of Ray or MLflow."""
    table = get_table(table_name)
    if seeds < 1:
        raise ConfigError(f"--seeds {seeds} must be >= 1")
    if max_concurrent < 0:
        raise ConfigError(f"--max-concurrent {max_concurrent} must be >= 0 (0: as many as the cluster holds)")
    selected = select_rows(table, rows)
    base_cfg = _with_data(load_config(base, list(overrides)), data)
    name = name or f"ablation-{table.name}-{_slug(base)}"
    if not NAME_PATTERN.fullmatch(name):
        raise ConfigError(f"--name {name!r} must be letters, digits, '_', '.' or '-' (it names MLflow runs and "
                          "folders), not starting with '.' or '-'")
    check_overrides(table, base_cfg, overrides)
    configs = {}
    for row in selected:
        row_cfg = _with_data(load_config(base, row_overrides(row, base_cfg) + list(overrides)), data)
        for seed in range(seeds):
            cfg = copy.deepcopy(row_cfg)
            cfg.name, cfg.train.seed = child_name(name, row.name, seed), seed
            cfg.tracking.tags = {"row": row.name, "seed": str(seed), "table": table.name}
            check_config(cfg)
            configs[(row.name, seed)] = pin_paths(cfg)
    spec = Spec(table=table.name, title=table.title, notes=" ".join(filter(None, [
                    table.notes, LAYOUT_NOTE if is_shrunk(base_cfg) else ""])),
                base=base, name=name, experiment=base_cfg.tracking.experiment, seeds=list(range(seeds)),
                rows=[_spec_row(r, base_cfg) for r in selected])
    return Plan(table, base, spec, pin_paths(base_cfg), configs, max_concurrent)


def _spec_row(row: Row, base_cfg: Config) -> SpecRow:
    paper = paper_figure(row, base_cfg)
    return SpecRow(name=row.name, label=row.label, paper=paper.top1 if paper else None,
                   source=paper.source if paper else "", overrides=row_overrides(row, base_cfg),
                   init_from=row.init_from)


def _with_data(cfg: Config, data: Optional[str]) -> Config:
    if data is not None:
        cfg.data.root = data
    return cfg


def _slug(base: str) -> str:
    return "_".join(Path(b.strip()).stem for b in base.split(","))


def check_overrides(table: Table, base_cfg: Config, overrides: Sequence[str]) -> None:
    """ConfigError for a command-line override of a key the table's rows vary (it would make them alike;
    all rows count, not only --rows: a later run of the others resumes the same table)."""
    varied = varied_keys(table.rows, base_cfg)
    for item in overrides:
        key = item.partition("=")[0].strip()
        if key in varied:
            raise ConfigError(f"override {item!r}: table {table.name}'s rows differ in {key}, which defines "
                              f"them; an override of it would make them the same network. Keys the rows vary: "
                              f"{sorted(varied)}")


def varied_keys(rows: Sequence[Row], base_cfg: Config) -> set[str]:
    """The ROW_KEYS whose value differs between ``rows`` (on the base preset ``base_cfg``)."""
    cfgs = [apply_overrides(base_cfg, row_overrides(r, base_cfg)) for r in rows]
    return {k for k in ROW_KEYS if len({repr(get(c, k)) for c in cfgs}) > 1}


def pin_paths(cfg: Config) -> Config:
    """Absolute local paths and tracking URI: a trial runs in another process and working directory."""
    cfg.tracking.uri = tracking.resolve_uri(cfg.tracking.uri)
    for section, key in (("train", "storage_path"), ("data", "cache_dir"), ("data", "root")):
        obj = getattr(cfg, section)
        value = getattr(obj, key)
        if value and "://" not in value:
            setattr(obj, key, str(Path(value).expanduser().resolve()))
    return cfg


def trials(plan: Plan, parent_id: str, done: dict[tuple[str, int], tuple[str, float]]) -> list[dict]:
    """Tune's grid: one trial per (row, seed) chain that has a step left; a row that initialises from another
    (2g's 128x1 rows) runs after it in the same trial, or from its finished run."""
    out = []
    rows = {r.name: r for r in plan.spec.rows}
    for seed in plan.spec.seeds:
        for root in (r for r in plan.spec.rows if not r.init_from):
            if (root.name, seed) not in plan.configs:  # a row or seed of an earlier invocation only
                continue
            chain = [root] + [r for r in plan.spec.rows
                              if r.init_from == root.name and (r.name, seed) in plan.configs]
            if all((r.name, seed) in done for r in chain):
                continue
            steps = []
            for r in chain:
                cfg = copy.deepcopy(plan.configs[(r.name, seed)])
                cfg.tracking.parent_run = parent_id
                steps.append(dataclasses.asdict(Step(r.name, cfg.name, to_yaml(cfg), rows[r.name].init_from)))
            out.append({"key": f"{root.name}-s{seed}", "steps": steps,
                        "done": {r.name: done[(r.name, seed)][0] for r in chain if (r.name, seed) in done}})
    return out


def run_trial(config: dict) -> dict:
    """The Tune trainable: fit() each step of the chain that has not finished; the last one's metrics."""
    trial = config["trial"]  # one value of the grid (param_space={"trial": grid_search(...)})
    run_ids = dict(trial["done"])
    result: dict = {}
    for step in (Step(**s) for s in trial["steps"]):
        if step.row in run_ids:
            continue
        cfg = from_yaml(step.cfg_yaml)
        if step.init_from:
            cfg.train.init_from = run_ids[step.init_from]
        result = fit(cfg)
        run_ids[step.row] = result["run_id"]
    return {"video_top1": result.get("val/video_top1", float("nan")), "run_ids": run_ids}


def auto_concurrency(cfg: Config) -> int:
    """How many training runs the cluster's resources hold at once (>= 1): the Train workers and decoders
    of one run, against ray.cluster_resources() now (an autoscaling cluster: pass --max-concurrent)."""
    need: dict[str, float] = {}
    for res, n in ((worker_resources(cfg), cfg.train.num_workers),
                   ({"CPU": cfg.data.decode_cpus, **raycluster.decoder_resources(cfg)}, cfg.data.decode_actors)):
        for k, v in res.items():
            need[k] = need.get(k, 0.0) + v * n
    have = ray.cluster_resources()
    fits = [math.floor(have.get(k, 0.0) / v) for k, v in need.items() if v > 0]
    return max(1, min(fits, default=1))


def run_trials(plan: Plan, grid: list[dict]) -> list[str]:
    """Run the grid as Tune trials; the errors of failed trials (empty: all finished)."""
    path, fs = checkpoint.ray_train_storage(plan.base_cfg)
    concurrent = plan.max_concurrent or auto_concurrency(plan.base_cfg)
    log.info("ablation %s: %d trial(s), %d at a time", plan.spec.name, len(grid), concurrent)
    tuner = tune.Tuner(
        tune.with_resources(run_trial, TRIAL_RESOURCES),
        param_space={"trial": tune.grid_search(grid)},
        # reuse_actors: the next trial's fit() runs in a process that has imported torch and nlray already
        tune_config=tune.TuneConfig(max_concurrent_trials=concurrent, reuse_actors=True,
                                    trial_name_creator=_trial_name, trial_dirname_creator=_trial_name),
        run_config=tune.RunConfig(name=f"{plan.spec.name}.tune", storage_path=path, storage_filesystem=fs,
                                  verbose=0),  # quiet: each fit() logs to its MLflow run
    )
    with _legacy_tune_output():
        results = tuner.fit()
    return [f"{r.config['trial']['key']}: {type(r.error).__name__}: {r.error}" for r in results if r.error]


@contextlib.contextmanager
def _legacy_tune_output():
    """Ray 2.60's new Tune console output prints its experiment table even at verbose=0; the legacy one
    (RAY_AIR_NEW_OUTPUT=0) prints nothing at verbose=0."""
    saved = os.environ.get(NEW_OUTPUT_ENV)
    os.environ[NEW_OUTPUT_ENV] = "0"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(NEW_OUTPUT_ENV, None)
        else:
            os.environ[NEW_OUTPUT_ENV] = saved


def _trial_name(trial) -> str:
    return trial.config["trial"]["key"]


def run_table(plan: Plan) -> tuple[Report, list[str]]:
    """Parent run, the trials not finished yet, then the report from MLflow (logged on the parent)."""
    parent, spec = open_parent(plan.base_cfg, plan.spec, common_tags(plan))
    plan = dataclasses.replace(plan, spec=spec)
    grid = trials(plan, parent.id, finished_children(parent, spec))
    errors = []
    if grid:  # a finished table is reported without joining Ray
        try:
            raycluster.connect(plan.base_cfg.cluster.address, plan.base_cfg.cluster.num_cpus,
                               plan.base_cfg.data.progress_interval_s)
            raycluster.require_shared_paths(plan.base_cfg)  # before any trial is scheduled
        except BaseException:
            parent.end("FAILED")
            raise
        errors = run_trials(plan, grid)
    report = build_report(parent)
    log_report(parent, report)
    parent.end("FINISHED" if report.complete and not errors else "FAILED")
    return report, errors


def common_tags(plan: Plan) -> dict[str, str]:
    """tracking.KEY_SETTINGS tags for the parent: the rows' common value, else 'varies'."""
    cfgs = list(plan.configs.values())
    return {tag: (str(get(cfgs[0], key)) if len({repr(get(c, key)) for c in cfgs}) == 1 else "varies")
            for tag, key in tracking.KEY_SETTINGS.items()}
