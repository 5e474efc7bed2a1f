"""A multi-node Ray cluster on one machine, shaped like cluster/aws.yaml, for trying jobs before a real one.

    python cluster/local_cluster.py --gpu-nodes 1 --decode-nodes 2   # prints the address, Ctrl-C to stop
    RAY_ADDRESS=<address> python jobs/train.py ...

Nodes are separate raylets (ray.cluster_utils.Cluster); "GPU" nodes carry a fake `gpu_node` resource only,
since this machine has no GPU: use train.use_gpu=false with it.
"""
import argparse
import signal

from ray.cluster_utils import Cluster


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gpu-nodes", type=int, default=1, help="train nodes (2 CPUs each)")
    p.add_argument("--decode-nodes", type=int, default=1, help="CPU-only decode nodes (2 CPUs each)")
    args = p.parse_args()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    for _ in range(args.gpu_nodes):
        cluster.add_node(num_cpus=2, resources={"gpu_node": 1})
    for _ in range(args.decode_nodes):
        cluster.add_node(num_cpus=2, resources={"decode_node": 1})
    cluster.wait_for_nodes()
    print(f"RAY_ADDRESS={cluster.address}", flush=True)
    try:
        signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        cluster.shutdown()


if __name__ == "__main__":
    main()
