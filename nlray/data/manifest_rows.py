"""The Ray Data datasource of the pipeline: manifest rows (uri, label_id, video_idx), shuffled per epoch."""
from __future__ import annotations

from typing import Any, Iterator, Optional

import numpy as np
import pandas as pd
from ray.data import Datasource, ReadTask
from ray.data.block import BlockMetadata

__all__ = ["ManifestRows", "ReadRows", "MAX_ROWS_PER_TASK"]

# A read task carries its rows (~81 bytes a Kinetics row pickled): 4096 rows are ~340 KiB, under the 1 MiB
# at which Ray 2.60 inspects a task's function. Fewer, larger tasks cost less: they run one after another
# (pipeline._rows_dataset), and the whole local Ray ticks while they do.
MAX_ROWS_PER_TASK = 4096


class ReadRows:
    """A read task's function: its rows as one pandas DataFrame.

    A named, picklable callable (Ray's planner reads ``read_fn.__name__``, which a functools.partial
    lacks). One frame per task: Ray merges the frames a task yields into one block anyway, and building
    many small ones cost 18x the CPU of one.
    """
    __name__ = "read_manifest_rows"

    def __init__(self, uris: np.ndarray, labels: np.ndarray, rows: np.ndarray):
        self.uris, self.labels, self.rows = uris, labels, rows  # (n,) str, int64, int64

    def __call__(self) -> Iterator[pd.DataFrame]:
        yield pd.DataFrame({"uri": self.uris, "label_id": self.labels, "video_idx": self.rows})


class ManifestRows(Datasource):
    """Ray Data datasource of (uri, label_id, video_idx), shuffled anew each time it is planned.

    Ray plans a dataset again at every execution (every epoch), so a permutation drawn in
    ``get_read_tasks`` is a per-epoch shuffle that needs no all-to-all shuffle: Ray 2.60's
    ``random_shuffle`` runs hash-shuffle tasks/actors that need CPUs of their own, which a decoder
    pool holding every CPU starves (the job hangs), and it is slow for a few small rows. Read tasks
    take 0 CPUs for the same reason. With ``seed`` the sequence of orders is reproducible.

    The rows are split into read tasks (one block each) of at most ``max_rows`` rows, whatever the
    manifest's size, and of equal size (to a row) in a multiple of ``parallelism`` tasks: the pipeline asks
    for a multiple of its decoder pool's size, so that every actor gets the same number of blocks and no
    actor decodes a last block alone while the others wait for the next epoch.
    """

    def __init__(self, rows, *, shuffle: bool, seed: Optional[int] = None, max_rows: int = MAX_ROWS_PER_TASK):
        if max_rows < 1:
            raise ValueError(f"max_rows={max_rows} must be >= 1")
        self.uris = rows["uri"].astype(str).to_numpy()
        self.labels = rows["label_id"].astype(np.int64).to_numpy()
        self.shuffle, self.seed, self.max_rows, self.plans = shuffle, seed, max_rows, 0

    def estimate_inmemory_data_size(self) -> int:
        return int(sum(len(u) for u in self.uris) + 16 * len(self.uris))

    def get_read_tasks(self, parallelism: int, per_task_row_limit: Optional[int] = None,
                       data_context: Any = None) -> list:
        n = len(self.uris)
        order = np.arange(n, dtype=np.int64)
        if self.shuffle:
            entropy = None if self.seed is None else [self.seed, self.plans]
            order = np.random.default_rng(entropy).permutation(n)
        self.plans += 1
        p = max(parallelism, 1)
        count = min(p * -(-n // (p * self.max_rows)) or p, max(n, 1))
        tasks = []
        for part in np.array_split(order, count):  # sizes differ by at most one row
            meta = BlockMetadata(num_rows=len(part), size_bytes=None, exec_stats=None, input_files=None)
            read = ReadRows(self.uris[part], self.labels[part], part)
            tasks.append(ReadTask(read, meta, per_task_row_limit=per_task_row_limit))
        return tasks
