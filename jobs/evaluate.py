"""Multi-view evaluation (docs/paper.md "Inference": 10 clips x 3 crops, shorter side 256, softmax averaged)
of a finished run or a checkpoint over the validation split, as a Ray Data batch-inference job.

    python jobs/evaluate.py --run <MLflow run id> --data s3://bucket/kinetics400 [--clips 10 --crops 3]
    python jobs/evaluate.py --checkpoint s3://bucket/results/<name>/step_00400000/ --data ...

The stored config gives the model and the clips' shape only: the data (--data, NLRAY_DATA), the tracking
server, the cluster and the decoder pool (--config PRESET and overrides) are yours. Clip-level (one view)
and video-level (all views averaged) top-1/top-5 go to MLflow: into the evaluated run with --run, else into
a new run named eval-<name>. Bad input (a malformed run id, an unknown scheme, a missing checkpoint, an
unreachable tracking server) ends in one line and exit code 2.
"""
import argparse
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nlray.config import ConfigError  # noqa: E402
from nlray.config import credentials_on_command_line  # noqa: E402
from nlray.train.cli import check_tracking_reachable, console_logging, usage_error  # noqa: E402
from nlray.secrets import split_userinfo  # noqa: E402
from nlray.uris import parse_uri  # noqa: E402

RUN_REF = re.compile(r"(runs:/)?[0-9a-f]{32}(/.*)?")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--run", help="MLflow run id or runs:/<id> of a finished training run")
    src.add_argument("--checkpoint", help="checkpoint directory (local, file:// or s3://)")
    p.add_argument("--data", help="dataset root or manifest (required unless the run trained on the synthetic set)")
    p.add_argument("--split", default=None, help="split to evaluate (default: data.val_split)")
    p.add_argument("--clips", type=int, default=None, help="clips per video (default: data.eval_num_clips)")
    p.add_argument("--crops", type=int, default=None, help="spatial crops per clip (default: data.eval_num_crops)")
    p.add_argument("--actors", type=int, default=1, help="model actors (one GPU each with --gpu)")
    p.add_argument("--gpu", action="store_true", help="score on GPUs")
    p.add_argument("--config", default="demo", help="preset for everything but the model and clip shape: "
                   "decoder pool, cluster (default demo)")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, "
                   "else sqlite:///mlflow.db)")
    p.add_argument("overrides", nargs="*", metavar="section.key=value", help="e.g. data.eval_short_side=256")
    return p


def check_args(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Exit 2 with one line for input that can be judged before anything starts."""
    if args.run is not None and not RUN_REF.fullmatch(args.run):
        usage_error(p, f"--run {args.run!r} is not an MLflow run id (32 hex digits) or runs:/<id>; a checkpoint "
                       "folder is --checkpoint")
    for flag, uri in (("--checkpoint", args.checkpoint), ("--data", args.data)):
        if uri is not None:
            try:
                parse_uri(uri)
            except ValueError as e:
                usage_error(p, f"{flag}: {e}")
    if args.tracking_uri and split_userinfo(args.tracking_uri)[1] is not None:
        usage_error(p, credentials_on_command_line("--tracking-uri"))
    for flag, n in (("--clips", args.clips), ("--crops", args.crops), ("--actors", args.actors)):
        if n is not None and n < 1:
            usage_error(p, f"{flag}={n} must be >= 1")


def main(argv=None) -> dict:
    console_logging()
    p = parser()
    args = p.parse_args(argv)
    check_args(p, args)
    try:
        check_tracking_reachable(args.tracking_uri)
        from nlray.train.evaluate import run_evaluation

        metrics = run_evaluation(ref=args.run or args.checkpoint, data=args.data, split=args.split,
                                 clips=args.clips, crops=args.crops, actors=args.actors, use_gpu=args.gpu,
                                 tracking_uri=args.tracking_uri, overrides=args.overrides, preset=args.config)
    except ConfigError as e:
        usage_error(p, str(e))
    print(metrics)
    return metrics


if __name__ == "__main__":
    main()
