"""Smoke test of jobs/bench_ingest.py: --help, and --quick (its own moto_server and Ray, stopped after).

Speed is not asserted here (no timed assertions in tests); the full run's figures go in the report.
"""
import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "jobs" / "bench_ingest.py"
CASES = {"ingest/1cpu/vs_dataloader", "ingest/2cpu/vs_dataloader", "ingest/ray_data/scaling_1to2",
         "ingest/dataloader/scaling_1to2"}


def test_help():
    out = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "--quick" in out.stdout and "DataLoader" in out.stdout


def test_quick_run_prints_every_case():
    # its own session: a separate Ray from the one the other tests share, stopped at its end
    out = subprocess.run([sys.executable, str(SCRIPT), "--quick"], capture_output=True, text=True,
                         timeout=600, start_new_session=True)
    assert out.returncode == 0, out.stderr[-3000:]
    records = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    assert {r["name"] for r in records} == CASES
    for r in records:
        assert r["speedup"] > 0 and r["clips_per_s"] > 0 and r["baseline_clips_per_s"] > 0
    assert all("efficiency" in r for r in records if "scaling" in r["name"])
