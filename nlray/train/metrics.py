"""What the worker loop measures, reduced across workers (collectives: every rank calls them)."""
from __future__ import annotations

import time

import torch
import torch.distributed as dist


class Meter:
    """Sums over a logging interval: loss, correct, clips, data wait, optimizer steps, wall time."""

    def __init__(self, device: torch.device):
        self.device = device
        self.reset()

    def reset(self) -> None:
        self.sums = torch.zeros(5, dtype=torch.float64)  # loss sum, correct, clips, data-wait seconds, steps
        self.t0 = time.perf_counter()

    def add(self, loss_sum: float, correct: int, clips: int, waited: float) -> None:
        """One micro-batch: the summed loss and correct count of the ``clips`` clips that entered the loss."""
        self.sums += torch.tensor([loss_sum, correct, clips, waited, 0], dtype=torch.float64)

    def step(self) -> None:
        self.sums[4] += 1

    def reduce(self) -> dict[str, float]:
        s = self.sums.to(self.device)
        steps = float(s[4])  # every rank took the same steps: not summed
        if dist.is_initialized():
            dist.all_reduce(s)
        loss_sum, correct, clips, waited, _ = s.tolist()
        elapsed = time.perf_counter() - self.t0
        world = dist.get_world_size() if dist.is_initialized() else 1
        return {"train/loss": loss_sum / max(clips, 1), "train/clip_top1": correct / max(clips, 1),
                "train/clips_per_s": clips / max(elapsed, 1e-9),
                "train/step_clips": clips / max(steps, 1),  # the global batch, as measured
                "train/data_wait_share": waited / world / max(elapsed, 1e-9)}


def epoch_audit(seen: list[torch.Tensor], device: torch.device) -> dict[str, float]:
    """Clips of one whole epoch over all workers, and how many of them were a training row seen before in it.
    Each row of the repeated training frame is one clip per epoch (``train_frame``), so
    ``data/epoch_duplicates`` must stay 0, a decoder restarted mid-epoch included; ``data/epoch_clips`` is
    the rows that decoded, less each worker's last partial batch. A restart (a failure, a preemption, a
    resize) begins the epoch again from its first clip: the clips seen before it are seen again, once."""
    idx = torch.cat(seen) if seen else torch.zeros(0, dtype=torch.int64)  # (clips,) training rows
    size = torch.tensor([int(idx.max()) + 1 if len(idx) else 0], device=device)
    if dist.is_initialized():
        dist.all_reduce(size, op=dist.ReduceOp.MAX)
    counts = torch.bincount(idx, minlength=int(size.item())).to(device)  # (rows,)
    if dist.is_initialized():
        dist.all_reduce(counts)
    return {"data/epoch_clips": float(counts.sum()), "data/epoch_duplicates": float((counts - 1).clamp(min=0).sum())}
