"""Long-clip fine-tuning (docs/paper.md "Long clips"): 128 consecutive frames, all BN frozen, lr 0.0025 for a
global batch of 16, initialised from a 32-frame model.

    ray job submit --working-dir . -- python jobs/train_longclip.py --config nl_i3d_r50_128f \
        --data s3://bucket/kinetics400 --init-from runs:/<32-frame run id> --name nl_i3d_r50_128f

With no arguments at all this is the embedded default: synthetic data, a short 32-frame-style stage, then
long-clip fine-tuning from it, 2 Ray Train workers on a local Ray, MLflow in ./mlflow.db.
`--demo section.key=value ...` runs the same two stages with overrides applied to both. On a cluster
(`ray job submit -- python jobs/train_longclip.py`) the cluster's NLRAY_STORAGE / MLFLOW_TRACKING_URI apply
and the synthetic set is generated once into the shared storage.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nlray.train.cli import console_logging, parse, run_job  # noqa: E402


def main(argv=None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] == "--demo":
        from nlray.train.demo import run_demo

        console_logging()
        overrides = argv[1:]
        return run_job(run_demo, overrides, overrides)
    # --help and a bad command line exit here, before torch and Ray load; no --init-from: refused (frozen BN)
    cfg = parse(__doc__, "nl_i3d_r50_128f", argv)
    from nlray.train.trainer import fit

    result = run_job(fit, cfg)
    print(result)
    return result


if __name__ == "__main__":
    main()
