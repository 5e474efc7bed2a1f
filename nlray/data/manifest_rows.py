"""The Ray Data datasource of the pipeline: manifest rows (uri, label_id, video_idx), shuffled per epoch."""
from __future__ import annotations

import functools
from typing import Any, Iterator, Optional

import numpy as np
import pandas as pd
from ray.data import Datasource, ReadTask
from ray.data.block import BlockMetadata

__all__ = ["ManifestRows"]


def _rows_block(uris: np.ndarray, labels: np.ndarray, rows: np.ndarray, block: int) -> Iterator[Any]:
    """A read task's output: its rows as pandas blocks of ``block`` rows."""
    for i in range(0, len(uris), block):
        yield pd.DataFrame({"uri": uris[i:i + block], "label_id": labels[i:i + block],
                            "video_idx": rows[i:i + block]})


class ManifestRows(Datasource):
    """Ray Data datasource of (uri, label_id, video_idx), shuffled anew each time it is planned.

    Ray plans a dataset again at every execution (every epoch), so a permutation drawn in
    ``get_read_tasks`` is a per-epoch shuffle that needs no all-to-all shuffle: Ray 2.60's
    ``random_shuffle`` runs hash-shuffle tasks/actors that need CPUs of their own, which a decoder
    pool holding every CPU starves (the job hangs), and it is slow for a few small rows. Read tasks
    take 0 CPUs for the same reason. With ``seed`` the sequence of orders is reproducible.
    """

    def __init__(self, rows, *, block: int, shuffle: bool, seed: Optional[int] = None):
        self.uris = rows["uri"].astype(str).to_numpy()
        self.labels = rows["label_id"].astype(np.int64).to_numpy()
        self.block, self.shuffle, self.seed, self.plans = block, shuffle, seed, 0

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
        per_task = max(self.block, -(-n // max(parallelism, 1)))  # whole blocks per read task
        per_task = -(-per_task // self.block) * self.block
        tasks = []
        for i in range(0, n, per_task):
            part = order[i:i + per_task]
            meta = BlockMetadata(num_rows=len(part), size_bytes=None, exec_stats=None, input_files=None)
            read = functools.partial(_rows_block, self.uris[part], self.labels[part], part, self.block)
            tasks.append(ReadTask(read, meta, per_task_row_limit=per_task_row_limit))
        return tasks
