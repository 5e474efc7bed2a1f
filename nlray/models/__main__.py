"""python -m nlray.models PRESET [section.key=value ...]: parameters, multiply-adds, non-local positions.

    python -m nlray.models nl_i3d_r50_32f
    python -m nlray.models nl_i3d_r50_128f model.nl_temporal_groups=4
    python -m nlray.models nl_i3d_r50_32f --json
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from typing import Optional

from nlray.config import ConfigError, preset_names
from nlray.models.summary import format_summary, summarize_config


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nlray.models", description=__doc__.splitlines()[0],
                                     epilog="presets: " + ", ".join(preset_names()))
    parser.add_argument("preset", help="preset name or path to a .yaml")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. data.frames=128")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    args = parser.parse_args(argv)
    try:
        summary = summarize_config(args.preset, args.overrides)
    except (ConfigError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(dataclasses.asdict(summary)) if args.json else format_summary(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
