"""What a run's console must show, for the tests that run one as a real process (a submitted job's logs):
a progress line per logging interval and stage, evaluation progress, and no warning that a deprecated or
misused call of ours causes."""
from __future__ import annotations

import itertools
import pkgutil
import re

import nlray

# a Python warning attributed to one of these (the frame that called the warning's source) fails the run,
# on the driver and in every Ray worker (they inherit PYTHONWARNINGS)
OWN_MODULES = sorted(m.name for m in pkgutil.walk_packages(nlray.__path__, "nlray."))
# what Ray says when we call what it deprecated, and the noise configured away; Ray often logs these
# (logger.warning) or warns from its own module, which no warnings filter of ours attributes to us
NOT_ON_CONSOLE = ("iter_torch_batches(collate_fn)", "``concurrency`` is deprecated",
                  "exclude_resources` is deprecated", "NumPy array is not writable",
                  "worker processes have been started")
PROGRESS = (r"nlray step (\d+)/(\d+) \((\d+)%\) epoch \d+ loss [\d.]+ clip_top1 [\d.]+ lr [\d.]+ "
            r"clips/s [\d.]+ data_wait \d+% eta \w+")


def strict_warnings() -> str:
    """PYTHONWARNINGS: every warning our own modules cause is an error."""
    # setting PYTHONWARNINGS turns off Ray's own "show RayDeprecationWarning" filter (ray.util.annotations):
    # shown again here, below the errors (the last filter listed is the first one applied)
    return ",".join(["default::DeprecationWarning", *(f"error::Warning:{m}" for m in OWN_MODULES)])


def assert_console(console: str, *, stages: int, steps: int, log_every: int) -> None:
    """Each stage's progress lines, in order, an evaluation count per stage, and none of NOT_ON_CONSOLE.

    Nodes started on one machine share one log folder and each node's log monitor forwards every worker's
    lines, so a worker's line may show once per node, in a row: a repeat in a row counts once."""
    lines = [k for k, _ in itertools.groupby((int(s), int(t), int(p)) for s, t, p in re.findall(PROGRESS, console))]
    one = [(s, steps, 100 * s // steps) for s in range(log_every, steps + 1, log_every)]
    assert lines == one * stages, (lines, [line for line in console.splitlines() if "nlray " in line][:60])
    evals = re.findall(r"nlray eval (\d+)/\1 videos", console)  # the driver's own lines: no repeats
    assert len(evals) == stages, (evals, console[-5000:])
    for message in NOT_ON_CONSOLE:
        at = console.find(message)
        assert at < 0, (message, console[max(at - 2000, 0):at + 500])
