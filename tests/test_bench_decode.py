"""Smoke test of jobs/bench_decode.py: --help, and --quick prints one well-formed JSON record per case.

Speed is not asserted here (no timed assertions in tests); the full run's figures go in the report.
"""
import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "jobs" / "bench_decode.py"
CASES = {f"{s}/{f}/vs_pyav_seek" for s in ("32x2", "128x1") for f in ("raw", "prepared")} | {
    f"{s}/{f}/decord_vs_pyav_seek" for s in ("32x2", "128x1") for f in ("raw", "prepared")} | {
    "eval10/raw/vs_separate_seeks", "eval10/prepared/vs_separate_seeks",
    "32x2/prepared_vs_raw", "128x1/prepared_vs_raw", "eval10/prepared_vs_raw"}


def test_help():
    out = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "--quick" in out.stdout and "vs_pyav_seek" in out.stdout


def test_quick_run_prints_every_case():
    out = subprocess.run([sys.executable, str(SCRIPT), "--quick"], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    records = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    assert {r["name"] for r in records} == CASES
    for r in records:
        assert r["speedup"] > 0 and r["clips"] >= 1
        if "same_frames" in r:  # shipped PyAV decoder and the baseline gave identical frames
            assert r["same_frames"] is True, r["name"]
