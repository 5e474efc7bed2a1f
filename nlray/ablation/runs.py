"""An ablation table in MLflow: one parent run (found again by name) holding the table's spec, and one child
run per row and seed (``<name>-<row>-s<seed>``, created by fit() under tracking.parent_run).

Everything here goes through nlray.tracking's public handles (find_run, Run), so the report needs nothing
but the tracking server and the parent's id.
"""
from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Optional

from nlray import tracking
from nlray.ablation.tables import get_table
from nlray.config import Config, ConfigError, TrackingConfig
from nlray.tracking import Run

log = logging.getLogger("nlray")

SPEC_FILE = "ablation.json"  # the table's rows, paper figures and seeds, on the parent run
METRIC = "val/video_top1"


@dataclass(frozen=True)
class SpecRow:
    name: str
    label: str
    paper: Optional[float]  # top-1 in %, None where the paper has no figure for this depth
    source: str  # where the figure comes from, e.g. "2a R50"
    overrides: list[str]  # what the row changes relative to the base preset (as run)
    init_from: str = ""


@dataclass(frozen=True)
class Spec:
    """A table as it was run: what the report needs besides the children's metrics."""

    table: str
    title: str
    notes: str
    base: str
    name: str  # the parent run's name; children are <name>-<row>-s<seed>
    experiment: str
    seeds: list[int]
    rows: list[SpecRow] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True)

    @staticmethod
    def from_json(text: str) -> "Spec":
        data = json.loads(text)
        return Spec(**{**data, "rows": [SpecRow(**r) for r in data["rows"]]})

    def merged(self, old: "Spec") -> "Spec":
        """This spec with the rows and seeds an earlier invocation ran too (a narrower rerun drops nothing),
        rows in the table's order."""
        names = {r.name for r in self.rows}
        order = [r.name for r in get_table(self.table).rows]
        rows = sorted(self.rows + [r for r in old.rows if r.name not in names],
                      key=lambda r: order.index(r.name) if r.name in order else len(order))
        return replace(self, rows=rows, seeds=sorted(set(self.seeds) | set(old.seeds)))


def child_name(name: str, row: str, seed: int) -> str:
    return f"{name}-{row}-s{seed}"


def _handle_cfg(name: str, uri: str, experiment: str) -> Config:
    """The bits of a Config that tracking.find_run reads."""
    return Config(name=name, tracking=TrackingConfig(uri=uri, experiment=experiment))


def read_spec(run: Run) -> Spec:
    with tracking.tmpdir() as tmp:
        return Spec.from_json(Path(run.download(SPEC_FILE, tmp)).read_text())


def open_parent(base: Config, spec: Spec, rows_tags: dict[str, str]) -> tuple[Run, Spec]:
    """The table's parent run, found by name (resumed) or created; (run, spec merged with the earlier one)."""
    cfg = replace(base, name=spec.name, tracking=replace(base.tracking, parent_run="", tags={}))
    cfg.tracking.uri = tracking.resolve_uri(cfg.tracking.uri)
    found = tracking.find_run(cfg)
    if found is not None:
        tags = found.tags()
        if tags.get("table") != spec.table:
            raise ConfigError(f"--name {spec.name!r}: MLflow run {found.id} of that name is "
                              f"{'table ' + tags['table'] if 'table' in tags else 'not an ablation table'}, "
                              f"not table {spec.table}; choose another --name")
        spec = spec.merged(read_spec(found))
    run, resumed = tracking.start_or_resume_run(cfg, [], {"ablation.table": spec.table})
    log.info("ablation %s: parent MLflow run %s (%s)", spec.name, run.id, "resumed" if resumed else "new")
    # key-setting tags: the rows' common value, or "varies" (the base preset's would mislead in the UI)
    run.set_tags({"table": spec.table, "base": spec.base, "seeds": str(len(spec.seeds)), **rows_tags})
    run.log_text(spec.to_json(), SPEC_FILE)
    return run, spec


def finished_children(parent: Run, spec: Spec) -> dict[tuple[str, int], tuple[str, float]]:
    """{(row, seed): (child run id, val/video_top1)} for every child that logged its validation."""
    out = {}
    for row in spec.rows:
        for seed in spec.seeds:
            child = find_child(parent, spec, row.name, seed)
            if child is not None:
                history = child.metric_history(METRIC)
                if history:
                    out[(row.name, seed)] = (child.id, history[-1][1])
    return out


def find_child(parent: Run, spec: Spec, row: str, seed: int) -> Optional[Run]:
    """The child run of ``row`` and ``seed``; ConfigError if a run of that name belongs to another parent
    (fit() would resume it, outside this table)."""
    name = child_name(spec.name, row, seed)
    run = tracking.find_run(_handle_cfg(name, parent.uri, spec.experiment))
    if run is None:
        return None
    other = run.tags().get("mlflow.parentRunId")
    if other != parent.id:
        raise ConfigError(f"MLflow run {run.id} is named {name!r} but is not a child of this table's parent run "
                          f"{parent.id} (its parent: {other or 'none'}); choose another --name")
    return run
