"""A job's log off a terminal (issue 16, item 6): a real training job run as a user runs it, its output to a
file, grows by a bounded number of lines a minute of training, and still has nlray's progress lines and
the data pipeline's one line per interval (nlray/progress.py) instead of Ray Data's redrawn bars.

A line is what a viewer shows as one: a carriage return (a redrawn bar) ends one as a newline does.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STEPS, LOG_EVERY, INTERVAL_S = 80, 20, 5
# the tiny synthetic set (8 training videos) x 60: 60 steps an epoch of 2 workers x 4 clips, so the run
# crosses an epoch; no validation and no checkpoint but the last: the minutes are training's
ARGS = ["--name", "joblog", "data.synthetic=tiny", "data.frames=8", "data.repeat=60", "data.val_split=none",
        f"train.steps={STEPS}", f"train.log_every={LOG_EVERY}", f"train.checkpoint_every={STEPS}",
        "train.warmup_steps=0", "train.lr_milestones=[1000]", f"data.progress_interval_s={INTERVAL_S}"]
MAX_LINES_PER_MIN = 20
STEP_LINE = re.compile(r"nlray step (\d+)/\d+ ")
DATA_LINE = re.compile(r"nlray data \S+: MapBatches\(ClipDecoder\) [\d.]+ rows/s, actors \d+( \(\+\d+ pending\))?, "
                       r"backpressured \d+%; out [\d.]+ rows/s, no output ready \d+% of \d+s")
LINE_END = re.compile(rb"\r\n|\r|\n")


def run_logged(args: list[str], env: dict, log_path: Path, cwd: Path,
               timeout: float = 600) -> tuple[int, list[tuple[float, str]]]:
    """Run ``python ARGS`` with stdout and stderr to ``log_path``; (exit code, each line of the file with the
    time it appeared there), the file read every quarter second while the job runs."""
    lines: list[tuple[float, str]] = []
    pending = b""
    with open(log_path, "wb") as out:
        proc = subprocess.Popen([sys.executable, *args], cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
    start = time.monotonic()
    with open(log_path, "rb") as log:
        while True:
            done = proc.poll() is not None
            pending += log.read()
            now = time.monotonic()
            *complete, pending = LINE_END.split(pending)
            lines.extend((now, line.decode(errors="replace")) for line in complete)
            if done:
                break
            if now - start > timeout:
                proc.kill()
                proc.wait()
                raise AssertionError(f"job still running after {timeout}s: {log_path.read_text()[-3000:]}")
            time.sleep(0.25)
    if pending:
        lines.append((time.monotonic(), pending.decode(errors="replace")))
    return proc.returncode, lines


def lines_per_minute_of_training(lines: list[tuple[float, str]]) -> tuple[float, int, float]:
    """(lines a minute, lines, seconds) from nlray's first step line to its last: every line that came after
    the first up to the last. A window under a minute counts as one: at most the rate's lines in any minute."""
    at = [i for i, (_, text) in enumerate(lines) if STEP_LINE.search(text)]
    assert len(at) >= 2, [text for _, text in lines][-60:]
    seconds = lines[at[-1]][0] - lines[at[0]][0]
    count = at[-1] - at[0]
    return count / max(seconds / 60, 1.0), count, seconds


def measure(root: Path, tmp: Path, tracking_uri: str, env: dict | None = None) -> dict:
    """Run jobs/train.py of ``root`` with ARGS into ``tmp``: its exit code, lines and the training rate."""
    # no PYTHONWARNINGS=strict_warnings(): "default" shows Ray's own pandas deprecation warning once a decoder
    # batch (Ray Data resets the registry), which a user's job, with Python's default filters, never shows
    env = {**(env or os.environ), "NLRAY_STORAGE": str(tmp / "results"), "MLFLOW_TRACKING_URI": tracking_uri}
    start = time.monotonic()
    code, lines = run_logged([str(root / "jobs" / "train.py"), *ARGS], env, tmp / "job.log", cwd=tmp)
    rate, count, seconds = lines_per_minute_of_training(lines) if code == 0 else (0.0, 0, 0.0)
    return {"code": code, "lines": lines, "rate": rate, "window_lines": count, "window_s": seconds,
            "wall_s": time.monotonic() - start}


def test_a_job_log_off_a_terminal_grows_a_few_lines_a_minute_of_training_with_its_progress_lines(
        tmp_path, mlflow_server):
    got = measure(ROOT, tmp_path, mlflow_server)
    texts = [text for _, text in got["lines"]]
    assert got["code"] == 0, "\n".join(texts[-80:])
    print(f"job log: {len(texts)} lines, {got['window_lines']} in {got['window_s']:.0f} s of training: "
          f"{got['rate']:.1f} lines/min; job {got['wall_s']:.0f} s")
    steps = [int(m.group(1)) for t in texts if (m := STEP_LINE.search(t))]
    assert steps == list(range(LOG_EVERY, STEPS + 1, LOG_EVERY)), steps
    data = [t for t in texts if DATA_LINE.search(t)]
    assert data, "\n".join(texts)
    assert not [t for t in texts if "row/s]" in t or "Running Dataset" in t], "\n".join(texts)  # no bars
    assert got["rate"] <= MAX_LINES_PER_MIN, "\n".join(texts)


def test_off_a_terminal_the_driver_turns_the_bars_off_and_the_interval_lines_on_before_datasets_are_built():
    from ray.data import DataContext

    from nlray import progress

    with DataContext.current(DataContext()):  # the session's own context stays as it was
        ctx = DataContext.get_current()
        assert not progress.for_logs(5, tty=True) and ctx.enable_progress_bars  # a terminal: Ray's bars
        assert progress.for_logs(5, tty=False)
        assert not ctx.enable_progress_bars and not ctx.print_on_execution_start
        progress.for_logs(None, tty=False)  # a later connect() without an interval keeps it
        assert ctx.get_config(progress.INTERVAL_KEY) == 5.0
        assert ctx.custom_execution_callback_classes.count(progress.DataProgress) == 1


def test_the_interval_line_names_each_actor_pool_and_what_the_consumer_got():
    from nlray import progress

    iv = progress._Interval()
    iv.rows_out, iv.waited_s = 1800, 24.6
    iv.pool("MapBatches(ClipDecoder)").update(rows=1848, backpressured_s=7.2, running=2, pending=1)
    line = "nlray " + progress.summary_line("train_0359Iz_1", iv, 60.0)
    assert line == ("nlray data train_0359Iz_1: MapBatches(ClipDecoder) 30.8 rows/s, actors 2 (+1 pending), "
                    "backpressured 12%; out 30.0 rows/s, no output ready 41% of 60s")
    assert DATA_LINE.search(line)
