"""Where a run came from: the code's git commit, the entry point (driver script), whether it ran as a Ray
job or locally, and the versions of nlray, Ray, torch and Python. Git and process lookups only, no MLflow;
nlray.tracking logs them as a run's source tags and params."""
from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import ray
import torch

import nlray

PROJECT_DIR = Path(nlray.__file__).resolve().parents[1]  # a git checkout, or a ray job's unpacked working dir
# Ray's job supervisor sets this in the driver of a `ray job submit` (ray._private.runtime_env.constants).
RAY_JOB_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"


def source_tags() -> dict[str, str]:
    """Where a run came from: the entry point, JOB (ray job submit) or LOCAL, git commit, nlray's version."""
    # __main__'s file is absolute (argv[0] may be relative, and a job's driver leaves its working dir)
    main_file = getattr(sys.modules.get("__main__"), "__file__", None) or sys.argv[0]
    tags = {"mlflow.source.name": entry_point(main_file),
            "mlflow.source.type": "JOB" if os.environ.get(RAY_JOB_ENV) else "LOCAL",
            "nlray.version": nlray.__version__}
    commit = git_commit(PROJECT_DIR)
    if commit:
        tags["mlflow.source.git.commit"] = commit
    return tags


def entry_point(argv0: str) -> str:
    """The driver script relative to the project (``jobs/train.py``), or its file name when outside it."""
    path = Path(argv0).resolve()
    return path.relative_to(PROJECT_DIR).as_posix() if path.is_relative_to(PROJECT_DIR) else path.name


def git_commit(folder: Path) -> str:
    """HEAD of the git checkout holding ``folder``; "" without one (a ray job's working dir has no .git)."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=folder, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):  # no git, or it hung
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""


def versions() -> dict[str, str]:
    return {"version.nlray": nlray.__version__, "version.ray": ray.__version__,
            "version.torch": torch.__version__, "version.python": platform.python_version()}
