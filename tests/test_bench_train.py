"""jobs/bench_train.py: --help, the demo preset end to end on the CPU (its JSON records, its FLOPs arithmetic
checked against nlray's own multiply-add count), and the max-batch search against a fake out-of-memory limit."""
import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nlray.config import load_config
from nlray.models.summary import summarize_config

SCRIPT = Path(__file__).resolve().parents[1] / "jobs" / "bench_train.py"


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=300)


def load_module():
    """jobs/ is no package: the script as a module (registered first: its dataclass looks itself up there)."""
    if "bench_train" not in sys.modules:
        spec = importlib.util.spec_from_file_location("bench_train", SCRIPT)
        module = importlib.util.module_from_spec(spec)
        sys.modules["bench_train"] = module
        spec.loader.exec_module(module)
    return sys.modules["bench_train"]


def test_help():
    out = run("--help")
    assert out.returncode == 0, out.stderr
    for flag in ("--preset", "--quick", "--max-batch", "--time-limit-s", "--peak-tflops", "--activation-checkpointing"):
        assert flag in out.stdout


def test_demo_on_cpu_prints_records_and_a_summary():
    out = run("--preset", "demo", "--device", "cpu", "--dtype", "float32", "--batch", "2", "--steps", "2",
              "--warmup", "1")
    assert out.returncode == 0, out.stderr
    lines = [json.loads(line) for line in out.stdout.strip().splitlines()]
    assert len(lines) == 2
    record, summary = lines
    for field in ("preset", "device", "dtype", "batch", "clips_per_s", "step_s", "tflops", "mfu", "peak_mem_gb",
                  "max_batch", "channels_last", "compile", "activation_checkpointing", "torch", "cudnn"):
        assert field in record, field
    assert "error" not in record
    assert (record["preset"], record["device"], record["dtype"], record["batch"]) == ("demo", "cpu", "float32", 2)
    assert record["steps_timed"] == 2 and len(record["step_times_s"]) == 2
    assert record["clips_per_s"] > 0 and record["step_s"] > 0
    assert math.isclose(record["clips_per_s"], 2 / record["step_s"], rel_tol=1e-4)
    assert record["mfu"] is None and record["peak_mem_gb"] is None and record["max_batch"] is None
    assert record["channels_last"] is False and record["compile"] is False
    assert record["activation_checkpointing"] is False  # the demo preset's
    assert record["torch"] == torch.__version__

    macs = summarize_config(load_config("demo")).macs  # computed here, independently of the script
    assert record["macs_per_clip"] == macs
    assert math.isclose(record["tflops"], 3 * 2 * macs * record["clips_per_s"] / 1e12, rel_tol=1e-4)

    assert summary["summary"][0]["preset"] == "demo"
    assert summary["summary"][0]["clips_per_s"] == record["clips_per_s"]


def test_a_bad_preset_is_an_error_record_not_a_crash():
    out = run("--preset", "no_such_preset", "--device", "cpu", "--steps", "1", "--warmup", "0")
    assert out.returncode == 1
    record, summary = (json.loads(line) for line in out.stdout.strip().splitlines())
    assert record["preset"] == "no_such_preset" and "unknown preset" in record["error"]
    assert "error" in summary["summary"][0]


class FakeBench:
    """try_batch as Bench's: None when the batch fits, the exception otherwise."""

    def __init__(self, fits_up_to: int, exc=torch.OutOfMemoryError):
        self.fits_up_to, self.exc, self.tried = fits_up_to, exc, []

    def try_batch(self, batch: int):
        self.tried.append(batch)
        return None if batch <= self.fits_up_to else self.exc("CUDA out of memory. Tried to allocate 2.00 GiB")


def test_max_batch_search():
    bt = load_module()
    fake = FakeBench(37)
    out = bt.search_max_batch(fake, 8, None, 64, math.inf)
    assert (out["max_batch"], out["max_batch_status"], out["max_batch_first_fail"]) == (37, "exact", 38)
    assert fake.tried[:3] == [16, 32, 64]  # doubling from the timed batch, then bisection
    assert bt.search_max_batch(FakeBench(37), 8, None, 32, math.inf)["max_batch_status"] == "limit"
    assert bt.search_max_batch(FakeBench(100), 8, None, 48, math.inf)["max_batch"] == 48  # the cap, not a power of 2
    assert bt.search_max_batch(FakeBench(5), 0, 8, 64, math.inf)["max_batch"] == 5  # the timed batch did not fit
    assert bt.search_max_batch(FakeBench(0), 0, 8, 64, math.inf)["max_batch"] is None
    bounded = bt.search_max_batch(FakeBench(37), 8, None, 64, -math.inf)  # past the deadline: a lower bound
    assert (bounded["max_batch"], bounded["max_batch_status"], bounded["max_batch_tries"]) == (8, "time_limit", [])
    not_memory = FakeBench(20, exc=lambda _msg: RuntimeError("cuDNN error: CUDNN_STATUS_NOT_SUPPORTED"))
    other = bt.search_max_batch(not_memory, 8, None, 64, math.inf)
    assert (other["max_batch"], other["max_batch_status"]) == (20, "non_oom_error")


@pytest.mark.parametrize("name,dtype,override,peak", [
    ("NVIDIA H200", "bfloat16", None, 989.0), ("NVIDIA H100 80GB HBM3", "bfloat16", None, 989.0),
    ("NVIDIA A100-SXM4-80GB", "bfloat16", None, 312.0), ("NVIDIA A10", "bfloat16", None, 125.0),
    ("NVIDIA L4", "bfloat16", None, 121.0), ("NVIDIA L40S", "bfloat16", None, 362.0),
    ("Some GPU", "bfloat16", None, None), ("NVIDIA H200", "float32", None, None),
    ("NVIDIA H200", "float32", 495.0, 495.0),
])
def test_peak_table(name, dtype, override, peak):
    assert load_module().peak_tflops_for(name, dtype, override) == peak
