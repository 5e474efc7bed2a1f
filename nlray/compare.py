"""Runs side by side, from the tracking store alone: key settings, validation metrics, learning curves.

    comparison = compare(uri, ["nl_i3d_r50_32f", "i3d_r50_32f", "3f2a9c..."])   # run ids or names
    print(comparison.markdown())
    comparison.save(Path("compare-3f2a9c01"))   # table.md, table.csv, learning_curves.png

A name is a run's ``nlray.name`` tag or its MLflow run name; the newest run of that name is taken.
"""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

from nlray import plots, tracking
from nlray.secrets import redact
from nlray.tracking import RunRecord

# Params that tell runs apart: the KEY_SETTINGS (tags for the MLflow UI) and the schedule; the run's params
# are the flattened config, so these are read from there.
SETTINGS = (*tracking.KEY_SETTINGS.values(), "data.batch_size", "train.steps", "train.base_lr", "world_size")
# Column -> metric; each is the latest value logged (train/loss: the final one).
METRICS = {"val/video_top1": "val/video_top1", "val/video_top5": "val/video_top5",
           "val/clip_top1": "val/clip_top1", "final train/loss": "train/loss"}
CURVES = ("train/loss", "train/clip_top1")
MISSING = "-"


class UnknownRunError(LookupError):
    """An argument that is neither a run id nor a run name in the tracking store."""


def resolve_runs(uri: str, refs: list[str]) -> list[tracking.Run]:
    """Each ref as a run: by id, else the newest run of that name; UnknownRunError names the first unknown."""
    if not refs:
        raise UnknownRunError("no run given: name at least one run id or run name")
    runs = []
    for ref in refs:
        run = tracking.lookup_run(uri, ref)
        if run is None:
            raise UnknownRunError(f"{ref!r} is neither a run id nor a run name (nlray.name tag or MLflow run "
                                  f"name) in the tracking store {redact(uri)}")
        runs.append(run)
    return runs


@dataclass(frozen=True)
class Comparison:
    records: list[RunRecord]

    def settings(self) -> dict[str, list[str]]:
        """Setting -> its value in each run (MISSING where a run did not log it); unlogged everywhere: left out."""
        values = {k: [r.params.get(k, MISSING) for r in self.records] for k in SETTINGS}
        return {k: v for k, v in values.items() if any(x != MISSING for x in v)}

    def common(self) -> dict[str, str]:
        """The settings on which every run agrees: said once, above the table."""
        return {k: v[0] for k, v in self.settings().items() if len(set(v)) == 1}

    def columns(self) -> list[str]:
        return ["run", "id", "status", *self.settings(), *METRICS]

    def rows(self) -> list[dict[str, str]]:
        """One row a run: every column, settings on which the runs agree included."""
        settings = self.settings()
        out = []
        for i, r in enumerate(self.records):
            row = {"run": _name(r), "id": r.run.id[:8], "status": r.status}
            row.update({k: v[i] for k, v in settings.items()})
            row.update({col: _number(r.metrics.get(key)) for col, key in METRICS.items()})
            out.append(row)
        return out

    def markdown(self) -> str:
        common = self.common()
        columns = [c for c in self.columns() if c not in common]
        head = "same in all runs: " + (", ".join(f"{k}={v}" for k, v in common.items()) or "nothing")
        lines = [head, "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        lines += ["| " + " | ".join(row[c] for c in columns) + " |" for row in self.rows()]
        return "\n".join(lines) + "\n"

    def csv(self) -> str:
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=self.columns(), lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: ("" if v == MISSING else v) for k, v in row.items()} for row in self.rows())
        return out.getvalue()

    def save(self, out: Path) -> list[Path]:
        """table.md, table.csv and learning_curves.png into ``out`` (created); their paths."""
        out.mkdir(parents=True, exist_ok=True)
        md, table = out / "table.md", out / "table.csv"
        md.write_text(self.markdown())
        table.write_text(self.csv())
        return [md, table, learning_curves_png(self.records, out / "learning_curves.png")]


def compare(uri: str, refs: list[str]) -> Comparison:
    return Comparison([run.record() for run in resolve_runs(uri, refs)])


def learning_curves_png(records: list[RunRecord], out: Path) -> Path:
    """train/loss and train/clip_top1 against the step, one line a run."""
    curves = {key: [(f"{_name(r)} ({r.run.id[:8]})", r.run.metric_history(key)) for r in records]
              for key in CURVES}
    return plots.compared_curves_png(curves, out)


def _name(record: RunRecord) -> str:
    return record.tags.get(tracking.NAME_TAG) or record.name


def _number(value) -> str:
    return MISSING if value is None else f"{value:.4f}"
