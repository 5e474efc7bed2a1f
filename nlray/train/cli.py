"""The command line every job shares: --config PRESET_OR_YAML, --data, --name, --init-from, dotted overrides."""
from __future__ import annotations

import argparse
import logging
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable, NoReturn, Optional, Sequence

from nlray.config import Config, ConfigError, check_config, get, load_config, preset_summaries
from nlray.config_fields import allowed, settings
from nlray.secrets import redact, split_userinfo

TRACKING_TIMEOUT_S = 10.0  # how long a job waits for an http(s) tracking server to answer before it stops

# The overrides most runs set, shown with the default preset's values in --help.
COMMON_OVERRIDES = ("train.steps", "train.num_workers", "train.use_gpu", "data.batch_size", "train.base_lr",
                    "data.decode_actors", "train.checkpoint_every", "train.storage_path", "tracking.uri",
                    "tracking.experiment", "cluster.address")


def parser(description: str, default_preset: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=help_epilog(default_preset))
    p.add_argument("--config", default=default_preset, help=f"preset name or YAML path (default {default_preset})")
    p.add_argument("--data", default=None, help="dataset root in the official Kinetics layout, or a manifest "
                   ".parquet; local path, file:// or s3:// (default: the synthetic demo set)")
    p.add_argument("--name", default=None, help="run name (default: the preset's name); submitting the same name again resumes it")
    p.add_argument("--init-from", default=None, help="MLflow run id, runs:/<id>[/path], or a checkpoint "
                   "directory / model.pt (local or s3://) to initialise from")
    p.add_argument("overrides", nargs="*", metavar="section.key=value", help="e.g. train.steps=1000")
    return p


def help_epilog(default_preset: str) -> str:
    """--help's tail: every preset with its one-line summary, then the common overrides and their defaults."""
    presets = "\n".join(f"  {name:<26} {summary}" for name, summary in preset_summaries().items())
    try:
        cfg = load_config(default_preset)
        fields = settings()  # each setting's help and allowed values, declared once (nlray/config_fields.py)
        common = "\n".join(f"  {key}={get(cfg, key)!r}  {fields[key].metadata.get('help', '')}"
                           + (f" [{allowed(fields[key])}]" if allowed(fields[key]) else "") for key in COMMON_OVERRIDES)
    except ConfigError as e:  # e.g. a bad NLRAY_* variable: --help still shows the presets
        common = f"  (defaults unavailable: {e})"
    return (f"presets (--config NAME, or NAME,OVERLAY: e.g. nl_i3d_r50_32f,caffe2):\n{presets}\n\n"
            f"common overrides, with the {default_preset} preset's values (any setting of nlray/config_fields.py "
            f"works, as section.key=value):\n{common}")


def to_config(args: argparse.Namespace) -> Config:
    """Preset <- dotted overrides <- the named flags (set verbatim: a run id must not be parsed as a number)."""
    cfg = load_config(args.config, list(args.overrides))
    if args.data is not None:
        cfg.data.root = args.data
    cfg.name = args.name or cfg.name or Path(args.config).stem  # default: the preset's name
    if getattr(args, "init_from", None):
        cfg.train.init_from = args.init_from
    check_config(cfg)
    return cfg


def parse(description: str, default_preset: str, argv: Optional[Sequence[str]] = None) -> Config:
    """Parse and validate; a bad key or value, or a tracking server that does not answer, exits 2 with one
    line before any Ray resource is asked for."""
    console_logging()
    p = parser(description, default_preset)
    args = p.parse_args(argv)
    try:
        cfg = to_config(args)
        check_tracking_reachable(cfg.tracking.uri)
    except ConfigError as e:
        usage_error(p, str(e))
    return cfg


def usage_error(p: argparse.ArgumentParser, message: str) -> NoReturn:
    """``prog: error: message`` on one line (secrets redacted), exit code 2."""
    p.exit(2, f"{p.prog}: error: {' '.join(redact(message).split())}\n")


def check_tracking_reachable(uri: Optional[str], timeout_s: float = TRACKING_TIMEOUT_S) -> None:
    """ConfigError within ``timeout_s`` when an http(s) tracking server does not answer (MLflow's own client
    retries for minutes with no output). Any HTTP answer, even 401, means it is there."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI", "")
    if not uri.startswith(("http://", "https://")):
        return
    clean = split_userinfo(uri)[0]
    try:
        urllib.request.urlopen(clean.rstrip("/") + "/health", timeout=timeout_s).close()
    except urllib.error.HTTPError:
        return
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        raise ConfigError(f"tracking server {clean} did not answer within {timeout_s:g} s ({reason}): start it, "
                          "or set tracking.uri / MLFLOW_TRACKING_URI to one that runs") from None


def console_logging() -> None:
    """The driver's INFO lines (nlray's progress, evaluation counts) on its console, with the time."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")


def run_job(fn: Callable[..., Any], *args: Any) -> Any:
    """Run a job's body; a ConfigError found on the cluster (e.g. a node-local path) exits 2 with its message."""
    try:
        return fn(*args)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
