"""Compare training runs side by side from MLflow alone: key settings (model, clips, schedule, workers), val
video/clip top-1 and top-5, the final training loss, and their learning curves overlaid.

    python jobs/compare.py nl_i3d_r50_32f i3d_r50_32f                # run names: the newest run of each
    python jobs/compare.py 3f2a9c01d4e5... demo-long --out cmp --tracking-uri http://127.0.0.1:5000

Prints the table as Markdown (settings shared by every run once, above it) and writes table.md, table.csv
and learning_curves.png (train/loss, train/clip_top1 against the step) into --out.
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nlray import tracking  # noqa: E402
from nlray.compare import UnknownRunError, compare  # noqa: E402
from nlray.config import TrackingConfig, env_layer  # noqa: E402


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", metavar="RUN_OR_NAME",
                   help="MLflow run id, or a run name (--name of the job; the newest run of that name)")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, "
                   f"else {TrackingConfig.uri})")
    p.add_argument("--out", default=None, help="folder for table.md, table.csv, learning_curves.png "
                   "(default: ./compare-<first run id, 8 characters>)")
    return p


def main(argv=None) -> str:
    p = parser()
    args = p.parse_args(argv)
    from_env = env_layer().get("tracking", {}).get("uri")
    uri = tracking.resolve_uri(args.tracking_uri or from_env or TrackingConfig.uri)
    try:
        comparison = compare(uri, args.runs)
    except UnknownRunError as e:
        p.error(str(e))  # exit 2, naming the run
    out = Path(args.out or f"compare-{comparison.records[0].run.id[:8]}")
    text = comparison.markdown()
    print(text)
    for path in comparison.save(out):
        print(f"wrote {path}")
    return text


if __name__ == "__main__":
    main()
