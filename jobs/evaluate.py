"""Multi-view evaluation (PAPER.md "Inference": 10 clips x 3 crops, shorter side 256, softmax averaged) of a
finished run or a checkpoint over the validation split, as a Ray Data batch-inference job.

    python jobs/evaluate.py --run <MLflow run id> [--data s3://bucket/kinetics400] [--clips 10 --crops 3]
    python jobs/evaluate.py --checkpoint s3://bucket/results/<name>/checkpoint_.../ --data ...

Clip-level (one view) and video-level (all views averaged) top-1/top-5 go to MLflow: into the evaluated run
with --run, else into a new run named eval-<name>.
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nlray.train.evaluate import run_evaluation  # noqa: E402


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--run", help="MLflow run id or runs:/<id> of a finished training run")
    src.add_argument("--checkpoint", help="checkpoint directory (local, file:// or s3://)")
    p.add_argument("--data", help="dataset root or manifest (default: the one the run trained on)")
    p.add_argument("--split", default=None, help="split to evaluate (default: data.val_split)")
    p.add_argument("--clips", type=int, default=None, help="clips per video (default: data.eval_num_clips)")
    p.add_argument("--crops", type=int, default=None, help="spatial crops per clip (default: data.eval_num_crops)")
    p.add_argument("--actors", type=int, default=1, help="model actors (one GPU each with --gpu)")
    p.add_argument("--gpu", action="store_true", help="score on GPUs")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: the run's)")
    p.add_argument("overrides", nargs="*", metavar="section.key=value", help="e.g. data.eval_short_side=256")
    return p


def main(argv=None) -> dict:
    args = parser().parse_args(argv)
    metrics = run_evaluation(ref=args.run or args.checkpoint, data=args.data, split=args.split,
                             clips=args.clips, crops=args.crops, actors=args.actors, use_gpu=args.gpu,
                             tracking_uri=args.tracking_uri, overrides=args.overrides)
    print(metrics)
    return metrics


if __name__ == "__main__":
    main()
