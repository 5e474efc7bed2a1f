"""An ablation table rebuilt from MLflow alone: the parent run's spec + each child's val/video_top1.

    report = build_report(tracking.Run(parent_id, uri))
    print(report.markdown()); log_report(parent, report)   # table.md, table.csv, plots/table.png
"""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from nlray import plots, tracking
from nlray.ablation.runs import METRIC, Spec, SpecRow, finished_children, read_spec
from nlray.ablation.stats import Interval, t_interval
from nlray.tracking import Run


@dataclass(frozen=True)
class ReportRow:
    row: SpecRow
    values: list[float]  # val/video_top1 of each seed that finished, by seed
    interval: Optional[Interval]  # None: no seed finished

    @property
    def n(self) -> int:
        return len(self.values)


@dataclass(frozen=True)
class Report:
    parent_id: str
    spec: Spec
    rows: list[ReportRow]

    @property
    def complete(self) -> bool:
        return all(r.n == len(self.spec.seeds) for r in self.rows)

    def markdown(self) -> str:
        s = self.spec
        lines = [f"### Table {s.table}: {s.title}", "",
                 f"`{s.name}`, base preset `{s.base}`, seeds {s.seeds}; ours: {METRIC} (%), mean ± 95% "
                 "t-interval over seeds; paper: Kinetics-400 val top-1, 30-view (docs/paper.md).", "",
                 "| row | paper | ours | n |", "|---|---|---|---|"]
        for r in self.rows:
            paper = f"{r.row.paper:.1f} ({r.row.source})" if r.row.paper is not None else "—"
            ours = r.interval.text() if r.interval else "—"
            lines.append(f"| {r.row.label} | {paper} | {ours} | {r.n} |")
        if s.notes:
            lines += ["", f"Notes: {s.notes}"]
        lines += ["", f"MLflow parent run: {self.parent_id}"]
        return "\n".join(lines) + "\n"

    def csv(self) -> str:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["row", "label", "paper_top1", "paper_source", "mean_top1", "ci95_low", "ci95_high", "n",
                    "values"])
        for r in self.rows:
            iv, half = r.interval, r.interval.half_width if r.interval else None
            w.writerow([r.row.name, r.row.label, _pct(r.row.paper, 1.0), r.row.source,
                        _pct(iv.mean if iv else None), _pct(iv.mean - half if half is not None else None),
                        _pct(iv.mean + half if half is not None else None), r.n,
                        " ".join(f"{v * 100:.2f}" for v in r.values)])
        return buf.getvalue()

    def chart_png(self, out: Path) -> Path:
        """Our mean with its interval per row (left axis); the paper's figure as a marker (right axis)."""
        nan = float("nan")
        return plots.ablation_chart_png(
            out, title=f"Table {self.spec.table}: {self.spec.title}", metric=METRIC,
            labels=[r.row.label for r in self.rows],
            ours=[r.interval.mean * 100 if r.interval else nan for r in self.rows],
            ours_error=[r.interval.half_width * 100 if r.interval and r.interval.half_width is not None else 0.0
                        for r in self.rows],
            paper=[r.row.paper if r.row.paper is not None else nan for r in self.rows])


def _pct(value: Optional[float], scale: float = 100.0) -> str:
    return "" if value is None else f"{value * scale:.2f}"


def build_report(parent: Run) -> Report:
    spec = read_spec(parent)
    done = finished_children(parent, spec)
    rows = []
    for row in spec.rows:
        values = [done[(row.name, s)][1] for s in spec.seeds if (row.name, s) in done]
        rows.append(ReportRow(row, values, t_interval(values) if values else None))
    return Report(parent.id, spec, rows)


def log_report(parent: Run, report: Report) -> None:
    """table.md and table.csv at the top of the parent's artifacts, the chart as plots/table.png."""
    parent.log_text(report.markdown(), "table.md")
    parent.log_text(report.csv(), "table.csv")
    with tracking.tmpdir() as tmp:
        parent.log_png(report.chart_png(Path(tmp) / "table.png"))
