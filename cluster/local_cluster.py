"""A multi-node Ray cluster on one machine, shaped like cluster/aws.yaml, to try jobs before a real one.

    python cluster/local_cluster.py --train-nodes 1 --decode-nodes 2     # fixed nodes
    python cluster/local_cluster.py --autoscaling                        # nodes come and go with the work

It prints the variables a client needs (token auth is on: RAY_AUTH_MODE, RAY_AUTH_TOKEN_PATH, RAY_ADDRESS)
and the dashboard URL; paste the `export` lines into another shell, then e.g.

    ray job submit --address <dashboard URL> --working-dir . -- python jobs/train.py train.use_gpu=false

Ctrl-C (or SIGTERM) stops every process of the cluster. Train nodes carry `nlray_train` (no GPU here: use
train.use_gpu=false), decode nodes `nlray_decode` = their CPUs, the head has 0 CPUs, as on the cloud.
The autoscaling cluster uses Ray's fake multi-node provider with cluster/local/autoscaling.yaml.
"""
from __future__ import annotations

import argparse
import shlex
import signal
import tempfile
from pathlib import Path

from nlray.testing.clusters import start_autoscaling_cluster, start_cluster

HERE = Path(__file__).resolve().parent


def _interrupt(*_) -> None:
    raise KeyboardInterrupt


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train-nodes", type=int, default=1, help="nodes with nlray_train (default 1)")
    p.add_argument("--decode-nodes", type=int, default=1, help="CPU-only nodes with nlray_decode (default 1)")
    p.add_argument("--cpus-per-node", type=int, default=2, help="logical CPUs of each node (default 2)")
    p.add_argument("--autoscaling", action="store_true",
                   help="start only a head whose fake autoscaler adds/removes nodes (ignores the counts)")
    p.add_argument("--config", type=Path, default=HERE / "local" / "autoscaling.yaml",
                   help="node types for --autoscaling (default cluster/local/autoscaling.yaml)")
    p.add_argument("--dir", type=Path, default=None, help="logs and the token (default: a new /tmp dir)")
    args = p.parse_args()

    work = args.dir or Path(tempfile.mkdtemp(prefix="nlray-cluster-"))
    if args.autoscaling:
        cluster = start_autoscaling_cluster(args.config, tmp=work)
    else:
        n = args.cpus_per_node
        nodes = ([{"num_cpus": n, "resources": {"nlray_train": 1}}] * args.train_nodes
                 + [{"num_cpus": n, "resources": {"nlray_decode": n}}] * args.decode_nodes)
        cluster = start_cluster(nodes=nodes, tmp=work)
    try:
        for k, v in cluster.client_env.items():
            print(f"export {k}={shlex.quote(v)}")
        print(f"# dashboard / Jobs API: {cluster.dashboard_url}\n# logs: {work}   (Ctrl-C stops the cluster)",
              flush=True)
        signal.signal(signal.SIGTERM, _interrupt)
        try:
            signal.pause()
        except KeyboardInterrupt:
            pass
    finally:
        cluster.stop()


if __name__ == "__main__":
    main()
