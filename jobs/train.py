"""32-frame training (docs/paper.md "Training recipe"): init from ImageNet (inflated), a checkpoint, or scratch.

    python jobs/train.py --config nl_i3d_r50_32f --data s3://bucket/kinetics400 --name nl_i3d_r50_32f
    ray job submit --working-dir . -- python jobs/train.py --config nl_i3d_r50_32f --data s3://... --name x
    python jobs/train.py                       # smoke: the demo preset on the synthetic set
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nlray.train.cli import parse, run_job  # noqa: E402


def main(argv=None) -> dict:
    cfg = parse(__doc__, "demo", argv)  # --help and a bad command line exit here, before torch and Ray load
    from nlray.train.trainer import fit

    result = run_job(fit, cfg)
    print(result)
    return result


if __name__ == "__main__":
    main()
