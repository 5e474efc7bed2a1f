"""jobs/bench_nonlocal.py: --help, and one tiny case end to end (its subprocesses, its JSON record)."""
import json
import subprocess
import sys
from pathlib import Path

SCRIPT = str(Path(__file__).resolve().parents[1] / "jobs" / "bench_nonlocal.py")


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True, timeout=300)


def test_help_and_case_listing():
    assert "--device" in run("--help").stdout
    listed = run("--list").stdout.split()
    assert "embedded_gaussian/128f/res3/core" in listed and "dot_product/32f/res4/block" in listed
    assert len(listed) == 4 * 2 * 2 * 2 and not any("tiny" in n for n in listed)
    bad = run("--cases", "nothing/*")
    assert bad.returncode != 0 and "matches no case" in bad.stderr


def test_one_tiny_case_prints_a_json_record():
    out = run("--cases", "embedded_gaussian/32f/tiny/block", "--repeats", "1")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 1
    record = json.loads(lines[0])
    assert record["name"] == "embedded_gaussian/32f/tiny/block"
    assert record["speedup"] > 0 and record["memory_saving"] > 0
    assert len(record["shipped_times_s"]) == len(record["plain_times_s"]) == 1
    assert record["plain_peak_bytes"] >= 0 and record["memory_method"]
    assert (record["C"], record["T"], record["N"], record["N_prime"]) == (16, 4, 256, 64)
