"""Progress in a log a person can read at any length of run (a submitted job's log, output to a file).

On a terminal Ray Data draws its progress bars and nothing here changes. Off a terminal its bars are
redrawn every second as new lines (a two-stage demo job wrote 18,294 lines in 7 minutes); ``for_logs``
turns them off on the driver before any dataset is built (a dataset takes the driver's DataContext with
it, so Ray Train's split coordinator gets the same settings) and puts in their place one line per
interval of every dataset that runs, from the process that runs it (``DataProgress``), e.g.

    (SplitCoordinator pid=4242) nlray data train_0359Iz_1: MapBatches(ClipDecoder) 30.8 rows/s, actors 2
    (+1 pending), backpressured 12%; out 31.2 rows/s, no output ready 41% of 60s

Per actor pool (the decoders): the rows it made a second, its actors running (and pending: waiting for a
node, or starting), and the share of the interval Ray Data held it back because its output was not taken
(training is the slower side); ``out``: the rows handed on to the consumer (the training workers' splits,
which take them in whole blocks), and the share of the interval with nothing ready for the consumer (the
pipeline may be the slower side: nlray's step lines say how long training waited, ``data_wait``).
"""
from __future__ import annotations

import logging
import sys
import time
from typing import Any, Optional

from ray.data._internal.execution.execution_callback import ExecutionCallback

INTERVAL_KEY = "nlray.progress_interval_s"  # DataContext key-value config: travels with the datasets
DEFAULT_INTERVAL_S = 60.0  # data.progress_interval_s's default
# Ray Data's one-time warning that bars are off (log_once key, ray/data/_internal/progress/__init__.py):
# its advice (turn them back on) is wrong for a log, where DataProgress's lines replace them.
BARS_OFF_WARNING = "ray_data_progress_manager_disabled"

log = logging.getLogger("nlray")


def for_logs(interval_s: Optional[float] = None, *, tty: Optional[bool] = None) -> bool:
    """Off a terminal (``tty``: default ``sys.stdout.isatty()``): no Ray Data progress bars nor per-execution
    plan lines, and one ``DataProgress`` line per ``interval_s`` (0: none) for every dataset built after
    this in this process. ``interval_s`` None keeps the interval set before (else ``DEFAULT_INTERVAL_S``).
    Returns whether it applied (False on a terminal). Call before the datasets are built."""
    from ray.data import DataContext
    from ray.util.debug import log_once

    if sys.stdout.isatty() if tty is None else tty:
        return False
    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False  # "Starting execution of ..." and its plan: two lines an epoch
    if interval_s is not None or ctx.get_config(INTERVAL_KEY) is None:
        ctx.set_config(INTERVAL_KEY, DEFAULT_INTERVAL_S if interval_s is None else float(interval_s))
    if DataProgress not in ctx.custom_execution_callback_classes:
        ctx.custom_execution_callback_classes.append(DataProgress)
    log_once(BARS_OFF_WARNING)
    return True


class _DropTrainReports(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Reporting training result")


def quiet_train_reports() -> None:
    """In a Ray Train worker: drop Ray Train's ``Reporting training result N: TrainingReport(...)`` line, one
    a worker each ``ray.train.report`` (nlray reports every ``train.log_every`` steps: with 8 workers, 8 long
    lines beside each step line). Its logger is named after its file, outside ``ray.train``, which RunConfig's
    ``LoggingConfig`` would reach; the checkpoint and restart lines stay."""
    from ray.train.v2._internal.execution import context

    logger = logging.getLogger(context.__file__)
    if not any(isinstance(f, _DropTrainReports) for f in logger.filters):
        logger.addFilter(_DropTrainReports())


class _Interval:
    """What the executions of one process did since its last line (executions run one after another:
    an epoch's may be shorter than an interval, so the interval outlives them)."""

    def __init__(self) -> None:
        self.start = time.monotonic()
        self.rows_out = 0
        self.waited_s = 0.0
        self.pools: dict[str, dict[str, Any]] = {}  # op name -> rows, backpressured_s, running, pending

    def pool(self, name: str) -> dict[str, Any]:
        return self.pools.setdefault(name, {"rows": 0, "backpressured_s": 0.0, "running": 0, "pending": 0})


_interval: Optional[_Interval] = None


def _state() -> _Interval:
    global _interval
    if _interval is None:
        _interval = _Interval()
    return _interval


def _logger() -> logging.Logger:
    """nlray's logger; in a Ray worker process (the split coordinator) nothing handles it yet: stderr,
    which Ray forwards to the driver's log."""
    if not log.hasHandlers():
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(name)s %(message)s"))
        log.addHandler(handler)
        log.propagate = False
        log.setLevel(logging.INFO)
    return log


def _pct(part: float, whole: float) -> str:
    return f"{min(100, round(100 * part / whole)) if whole > 0 else 0}%"


def summary_line(dataset: str, iv: _Interval, elapsed: float) -> str:
    """One line for an interval of ``elapsed`` seconds (module doc)."""
    pools = []
    for name, p in iv.pools.items():
        pending = f" (+{p['pending']} pending)" if p["pending"] else ""
        pools.append(f"{name} {p['rows'] / elapsed:.1f} rows/s, actors {p['running']}{pending}, "
                     f"backpressured {_pct(p['backpressured_s'], elapsed)}; ")
    return (f"data {dataset}: {''.join(pools)}out {iv.rows_out / elapsed:.1f} rows/s, "
            f"no output ready {_pct(iv.waited_s, elapsed)} of {elapsed:.0f}s")


class DataProgress(ExecutionCallback):
    """Ray Data execution callback (``DataContext.custom_execution_callback_classes``; one is made per
    execution, in the process that runs it): one ``summary_line`` per ``INTERVAL_KEY`` seconds.

    Reads counters the executor keeps anyway, once per scheduling step: no per-row cost."""

    def __init__(self) -> None:
        from ray.util.debug import log_once

        log_once(BARS_OFF_WARNING)  # made before the executor picks its progress manager
        self._rows_out = 0
        self._rows: dict[str, int] = {}
        self._last: Optional[float] = None

    def before_execution_starts(self, executor: Any) -> None:
        _state()  # an interval starts no later than its first execution
        self._last = time.monotonic()

    def on_execution_step(self, executor: Any) -> None:
        interval_s = float(executor._data_context.get_config(INTERVAL_KEY, DEFAULT_INTERVAL_S) or 0)
        if interval_s <= 0:
            return
        now = time.monotonic()
        dt, self._last = now - (self._last or now), now
        iv = _state()
        out_op, out_state = executor._output_node
        rows_out = out_op.metrics.row_outputs_taken
        iv.rows_out += rows_out - self._rows_out
        self._rows_out = rows_out
        if len(out_state.output_queue) == 0:  # what Ray Data calls the consumer idling
            iv.waited_s += dt
        for op in executor._topology:
            if not op.get_autoscaling_actor_pools():
                continue
            p = iv.pool(op.name)
            rows = op.metrics.rows_task_outputs_generated
            p["rows"] += rows - self._rows.get(op.name, 0)
            self._rows[op.name] = rows
            info = op.get_actor_info()
            p["running"], p["pending"] = info.running, info.pending + info.restarting
            if getattr(op, "_in_task_submission_backpressure", False) or \
                    getattr(op, "_in_task_output_backpressure", False):
                p["backpressured_s"] += dt
        elapsed = now - iv.start
        if elapsed >= interval_s:
            _logger().info("%s", summary_line(executor._dataset_id, iv, elapsed))
            global _interval
            _interval = _Interval()


def progress_line(step: int, total: int, epoch: int, metrics: dict[str, float], lr: float,
                  elapsed_s: float, steps_done: int) -> str:
    """The console line of a logging interval, e.g. ``step 120/1200 (10%) epoch 1 loss 1.234 clip_top1 0.500
    lr 0.0100 clips/s 55.1 data_wait 3% eta 4m10s``. metrics: Meter.reduce()'s; the eta is the mean step
    time of this session (``steps_done`` steps in ``elapsed_s``) times the steps left."""
    left = max(total - step, 0)
    eta = format_duration(elapsed_s / steps_done * left) if steps_done > 0 else "?"
    return (f"step {step}/{total} ({100 * step // max(total, 1)}%) epoch {epoch} "
            f"loss {metrics['train/loss']:.3f} clip_top1 {metrics['train/clip_top1']:.3f} lr {lr:.4f} "
            f"clips/s {metrics['train/clips_per_s']:.1f} data_wait {100 * metrics['train/data_wait_share']:.0f}% "
            f"eta {eta}")


def format_duration(seconds: float) -> str:
    """``42s``, ``4m10s``, ``2h05m``: whole seconds, the two largest units."""
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"
