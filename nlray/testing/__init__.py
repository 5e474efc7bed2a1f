"""Real local components for tests, benchmarks and laptops, never used by training itself.

- ``servers``: a moto S3 endpoint and other servers as subprocesses, stopped by their own pid.
- ``clusters``: multi-node and autoscaling Ray clusters of real ``ray start`` processes on one machine
  (``cluster/local_cluster.py`` is its command line).
"""
