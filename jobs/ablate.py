"""Run one of the paper's ablation tables (docs/paper.md "Results to compare against") with N seeds per row, as
Ray Tune trials of the training function, and print the table built from MLflow.

    python jobs/ablate.py 2a --base demo --seeds 3                        # laptop: one run at a time
    python jobs/ablate.py 3 --base nl_i3d_r50_32f --seeds 3 --data s3://bucket/k400-256 --max-concurrent 2
    ray job submit --working-dir . -- python jobs/ablate.py 2c --base c2d_r50_32f --seeds 2 --data s3://...
    python jobs/ablate.py 2a --base demo --seeds 1 --rows c2d,embedded_gaussian train.steps=4   # smoke

Every (row, seed) is a child MLflow run <name>-<row>-s<seed> (train.seed = seed) of one parent run <name>
(default ablation-<table>-<base>); the table (table.md, table.csv, plots/table.png) is logged on the parent.
Running the same command again resumes: finished children are not rerun, unfinished ones resume.
Dotted overrides apply to every row; one that changes a key the table's rows differ in is refused.
`python jobs/report.py <parent run id>` rebuilds the table from MLflow alone.
"""
import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nlray.ablation.runner import make_plan, run_table  # noqa: E402
from nlray.ablation.tables import TABLES  # noqa: E402
from nlray.config import ConfigError, preset_names  # noqa: E402
from nlray.train.cli import console_logging, run_job  # noqa: E402


def parser() -> argparse.ArgumentParser:
    rows = "\n".join(f"  {t.name}: {t.title}\n      rows: {', '.join(r.name for r in t.rows)}"
                     for t in TABLES.values())
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=f"tables:\n{rows}\npresets: {', '.join(preset_names())}")
    p.add_argument("table", choices=list(TABLES), help="docs/paper.md's table letter")
    p.add_argument("--base", default="demo", help="base preset (or YAML path, or presets joined by commas) the "
                   "rows are relative to (default demo)")
    p.add_argument("--seeds", type=int, default=1, help="seeds per row: 0..N-1 (default 1)")
    p.add_argument("--data", default=None, help="dataset root or manifest .parquet (default: the preset's)")
    p.add_argument("--name", default=None, help="parent run name (default ablation-<table>-<base>); the same "
                   "name resumes the table")
    p.add_argument("--rows", default="", help="comma-separated rows to run (default all; a 128x1 row brings its "
                   "32x2 row)")
    p.add_argument("--max-concurrent", type=int, default=0, help="trials at once (default 0: as many whole "
                   "training runs as the cluster's resources hold now, at least 1)")
    p.add_argument("overrides", nargs="*", metavar="section.key=value", help="applied to every row")
    return p


def main(argv=None) -> str:
    console_logging()
    logging.getLogger("ray.tune").setLevel(logging.WARNING)  # Tune's bookkeeping; trial errors still show
    p = parser()
    args = p.parse_intermixed_args(argv)  # options may come after the table and between overrides
    try:
        plan = make_plan(args.table, args.base, args.seeds, args.overrides, data=args.data, name=args.name,
                         rows=[r for r in args.rows.split(",") if r], max_concurrent=args.max_concurrent)
    except (ConfigError, ValueError) as e:
        p.exit(2, f"{p.prog}: error: {e}\n")
    report, errors = run_job(run_table, plan)
    print(report.markdown())  # ends with the parent run's id
    if errors or not report.complete:
        print("the table is incomplete; the same command again resumes it (finished runs are kept)"
              + "".join(f"\n  {e}" for e in errors), file=sys.stderr)
        raise SystemExit(1)
    return report.parent_id


if __name__ == "__main__":
    main()
