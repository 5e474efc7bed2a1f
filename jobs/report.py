"""Rebuild an ablation table from MLflow alone (the parent run's spec and its children's val/video_top1),
print it, and log it on the parent again (table.md, table.csv, plots/table.png).

    python jobs/report.py <parent run id>                       # MLFLOW_TRACKING_URI or sqlite:///mlflow.db
    python jobs/report.py <parent run id> --tracking-uri http://127.0.0.1:5000 --no-log
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nlray import tracking  # noqa: E402
from nlray.ablation.report import build_report, log_report  # noqa: E402
from nlray.config import TrackingConfig, env_layer  # noqa: E402


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("parent", help="MLflow run id of the table's parent run (jobs/ablate.py prints it)")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, "
                   f"else {TrackingConfig.uri})")
    p.add_argument("--no-log", action="store_true", help="print only; do not log the table on the parent")
    return p


def main(argv=None) -> str:
    args = parser().parse_args(argv)
    from_env = env_layer().get("tracking", {}).get("uri")
    parent = tracking.Run(args.parent, tracking.resolve_uri(args.tracking_uri or from_env or TrackingConfig.uri))
    report = build_report(parent)
    if not args.no_log:
        log_report(parent, report)
    text = report.markdown()
    print(text)
    return text


if __name__ == "__main__":
    main()
