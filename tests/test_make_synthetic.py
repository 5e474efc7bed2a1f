"""jobs/make_synthetic.py as a user runs it: --help, a small set, bad options."""
from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
from pathlib import Path

import av
import pytest

JOB = str(Path(__file__).resolve().parents[1] / "jobs" / "make_synthetic.py")


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, JOB, *args], capture_output=True, text=True)


def test_help():
    out = run("--help")
    assert out.returncode == 0 and "--per-class" in out.stdout and "--out" in out.stdout


def test_small_set(tmp_path):
    out = run("--out", str(tmp_path / "ds"), "--preset", "tiny", "--classes", "2", "--per-class",
              "2", "--val-per-class", "1", "--fps", "24", "--seed", "5")
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert summary["videos"] == 6 and summary["classes"] == ["moving_left", "moving_right"]
    with open(tmp_path / "ds" / "annotations" / "train.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["label"] for r in rows) == ["moving_left"] * 2 + ["moving_right"] * 2
    videos = sorted((tmp_path / "ds").rglob("*.mp4"))
    assert len(videos) == 6
    with av.open(str(videos[0])) as c:
        assert c.streams.video[0].codec_context.name == "h264"
        assert float(c.streams.video[0].average_rate) == 24


def test_longrange_preset(tmp_path):
    out = run("--out", str(tmp_path / "lr"), "--preset", "longrange", "--per-class", "2", "--val-per-class", "1")
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert summary["videos"] == 6 and summary["classes"] == ["same_direction", "different_direction"]
    videos = sorted((tmp_path / "lr").rglob("*.mp4"))
    assert {v.parent.name for v in videos} == {"same_direction", "different_direction"} and len(videos) == 6
    with av.open(str(videos[0])) as c:
        stream = c.streams.video[0]
        assert stream.codec_context.name == "h264" and stream.width == stream.height  # square frames
        assert sum(1 for _ in c.decode(stream)) == 36  # every 16x2 window sees both motions


def test_bad_options_name_the_value(tmp_path):
    sys.path.insert(0, str(Path(JOB).parent))
    import make_synthetic

    for args, message in ((["--classes", "99"], "--classes 99"),
                          (["--width", "300", "100"], "width_range=(300, 100)"),
                          (["--preset", "longrange", "--classes", "3"], "--classes 3: choose 1..2"),
                          (["--preset", "longrange", "--duration", "3", "3"], "the longrange classes need 32 to 39")):
        with pytest.raises(SystemExit, match=re.escape(message)):
            make_synthetic.main(["--out", str(tmp_path / "x"), *args])
    assert not (tmp_path / "x").exists()
