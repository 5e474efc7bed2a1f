"""``check_config``: every setting against its declaration (nlray/config_fields.py), then the rules between settings.

Each error is one line that names the key, the bad value and what is allowed.
"""
from __future__ import annotations

import math
from typing import Any, Callable

from nlray import choices
from nlray.config_fields import Config, ConfigError, get, settings


def check_config(cfg: Config) -> None:
    """Raise ConfigError for the first value outside its allowed set or range, or breaking a cross-field rule."""
    for key, f in settings().items():
        problem = setting_problem(key, get(cfg, key), f.metadata)
        if problem:
            raise ConfigError(problem)
    for _keys, rule in CROSS_FIELD_RULES:
        problem = rule(cfg)
        if problem:
            raise ConfigError(problem)


def setting_problem(key: str, value: Any, meta: Any) -> str:
    """What is wrong with one setting's value by its own declaration ('' if nothing): finite, choices, bounds,
    then its check."""
    if isinstance(value, float) and not math.isfinite(value):
        return f"{key}={value!r} must be a finite number"
    allowed = meta.get("choices")
    if allowed is not None and value not in allowed:
        return f"{key}={value!r} is not allowed; choose one of {list(allowed)}"
    bounds, note = meta.get("bounds"), f" ({meta['note']})" if meta.get("note") else ""
    if bounds is not None and isinstance(value, list):
        if not all(type(v) in (int, float) and v in bounds for v in value):
            return f"{key}={value!r}: every entry must be a number {bounds}{note}"
    elif bounds is not None and value is not None and value not in bounds:
        return f"{key}={value!r} must be {bounds}{note}"
    return meta["check"](key, value) if meta.get("check") else ""


def _short_side_fits_crop(cfg: Config) -> str:
    lo_hi = cfg.data.train_short_side
    if len(lo_hi) != 2 or not 0 < lo_hi[0] <= lo_hi[1] or lo_hi[0] < cfg.data.crop_size:
        return (f"data.train_short_side={lo_hi!r} must be [lo, hi] with "
                f"data.crop_size ({cfg.data.crop_size}) <= lo <= hi")
    return ""


def _eval_crop_fits(cfg: Config) -> str:
    if cfg.data.eval_crop_size > cfg.data.eval_short_side:
        return (f"data.eval_crop_size={cfg.data.eval_crop_size} must be <= "
                f"data.eval_short_side={cfg.data.eval_short_side}")
    return ""


def _placement_exists(cfg: Config) -> str:
    """Every ``model.nonlocal_placement`` entry is [stage 2..5, block of that stage]."""
    m = cfg.model
    depths = list(m.stage_depths or choices.STAGE_DEPTHS[m.depth])
    for pair in m.nonlocal_placement or []:
        ok = (isinstance(pair, list) and len(pair) == 2 and all(type(i) is int for i in pair)
              and 2 <= pair[0] < 2 + len(depths) and 0 <= pair[1] < depths[pair[0] - 2])
        if not ok:
            return (f"model.nonlocal_placement entry {pair!r} must be [stage, block] with stage 2..5 and block "
                    f"0..depth-1 of that stage (model.stage_depths / model.depth: {depths})")
    return ""


def _pool_can_grow(cfg: Config) -> str:
    if cfg.data.decode_actors_max and cfg.data.decode_actors_max < cfg.data.decode_actors:
        return (f"data.decode_actors_max={cfg.data.decode_actors_max} must be 0 (a fixed pool) or "
                f">= data.decode_actors={cfg.data.decode_actors}")
    return ""


def _global_batch_divides(cfg: Config) -> str:
    step = cfg.train.num_workers * cfg.data.batch_size
    if cfg.train.global_batch and cfg.train.global_batch % step:
        return (f"train.global_batch={cfg.train.global_batch} must be a multiple of train.num_workers x "
                f"data.batch_size = {step}")
    return ""


def _min_workers_fit(cfg: Config) -> str:
    if cfg.train.min_workers > cfg.train.num_workers:
        return (f"train.min_workers={cfg.train.min_workers} must be at most train.num_workers="
                f"{cfg.train.num_workers} (the most workers; 0 = a fixed size)")
    return ""


# The rules between settings, each with the keys it reads: (keys, cfg -> what is wrong, or ''). They run after
# every setting passed its own declaration (a placement is checked against valid stage depths).
CROSS_FIELD_RULES: tuple[tuple[tuple[str, ...], Callable[[Config], str]], ...] = (
    (("data.train_short_side", "data.crop_size"), _short_side_fits_crop),
    (("data.eval_crop_size", "data.eval_short_side"), _eval_crop_fits),
    (("model.nonlocal_placement", "model.stage_depths", "model.depth"), _placement_exists),
    (("data.decode_actors_max", "data.decode_actors"), _pool_can_grow),
    (("train.global_batch", "train.num_workers", "data.batch_size"), _global_batch_divides),
    (("train.min_workers", "train.num_workers"), _min_workers_fit),
)
