"""The training entry points: --help, and bad input that fails before any Ray resource is requested."""
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("job", ["jobs/train.py", "jobs/train_longclip.py", "jobs/evaluate.py"])
def test_help(job):
    out = run(job, "--help")
    assert out.returncode == 0, out.stderr
    assert "usage:" in out.stdout and "--data" in out.stdout


def test_longclip_help_names_the_paper_defaults_and_presets():
    out = run("jobs/train_longclip.py", "--help").stdout
    assert "128 consecutive frames" in out and "nl_i3d_r50_128f" in out and "--init-from" in out


def test_help_lists_every_preset_with_its_summary_and_the_common_overrides_with_the_default_presets_values():
    from nlray.config import load_config, preset_names

    out = run("jobs/train.py", "--help").stdout
    for name in preset_names():
        assert f"\n  {name} " in out, name
    assert "Non-local I3D ResNet-50, 5 blocks, 32x2 clips (Table 2f: 74.9)" in out  # the YAML's header line
    demo = load_config("demo")  # jobs/train.py's default preset
    assert f"train.steps={demo.train.steps!r}" in out and f"data.batch_size={demo.data.batch_size!r}" in out
    long = run("jobs/train_longclip.py", "--help").stdout  # another default preset, other values
    assert f"train.steps={load_config('nl_i3d_r50_128f').train.steps!r}" in long


@pytest.mark.parametrize("args, words", [
    (["model.instantiation=dot"], ["model.instantiation", "nl_instantiation"]),
    (["--config", "nl_i3d_r50_256f"], ["nl_i3d_r50_256f", "nl_i3d_r50_128f"]),
    (["--config", "nl_i3d_r50_128"], ["Did you mean 'nl_i3d_r50_128f'?"]),
    (["data.backend=ffmpeg"], ["ffmpeg", "decord", "pyav"]),
])
def test_bad_config_fails_fast_naming_the_key(args, words):
    out = run("jobs/train_longclip.py", *args)
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    for word in words:
        assert word in out.stderr, out.stderr
