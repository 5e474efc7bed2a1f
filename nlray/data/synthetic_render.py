"""The frames of one planned synthetic video, uint8 [T, H, W, 3] RGB: a pure function of its ``VideoPlan``.

Motion classes (``CLASSES``): one textured blob on a textured background, moving as its class says
(``_trajectory``). Longrange classes (``LONGRANGE_CLASSES``): two small squares on opposite sides of
the frame, the second moving well after the first (``_relation_paths``). Changing what is drawn here
changes every cached dataset: bump ``synthetic_spec.GENERATOR_VERSION``.
"""
from __future__ import annotations

import numpy as np

from nlray.data.synthetic_spec import LONGRANGE_CLASSES, LONGRANGE_TIMING, VideoPlan, relation_frame_range


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A static textured background: smooth colour blobs plus fine grain, float32 [H, W, 3]."""
    gh, gw = int(rng.integers(3, 7)), int(rng.integers(3, 7))
    coarse = rng.uniform(0.1, 0.9, size=(gh, gw, 3)).astype(np.float32)
    ys = np.linspace(0, gh - 1, height, dtype=np.float32)
    xs = np.linspace(0, gw - 1, width, dtype=np.float32)
    y0, x0 = np.floor(ys).astype(int), np.floor(xs).astype(int)
    y1, x1 = np.minimum(y0 + 1, gh - 1), np.minimum(x0 + 1, gw - 1)
    wy, wx = (ys - y0)[:, None, None], (xs - x0)[None, :, None]
    # Bilinear upsampling of the coarse grid: smooth, Kinetics-like colour regions.
    smooth = ((1 - wy) * ((1 - wx) * coarse[y0][:, x0] + wx * coarse[y0][:, x1])
              + wy * ((1 - wx) * coarse[y1][:, x0] + wx * coarse[y1][:, x1]))
    grain = rng.normal(0.0, 0.04, size=(height, width, 1)).astype(np.float32)
    return np.clip(smooth + grain, 0.0, 1.0)


def _trajectory(plan: VideoPlan, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Per-frame centre (x, y), radius, angle and brightness of the blob for the plan's class.

    Every path is symmetric about its middle (s runs from -1 to 1), so the two classes of a pair
    visit the same positions / sizes / angles with the same frequency: only the order differs.
    """
    h, w, n = plan.height, plan.width, plan.num_frames
    s = np.linspace(-1.0, 1.0, n, dtype=np.float32)
    r = float(rng.uniform(0.11, 0.15)) * min(h, w)
    x = np.full(n, rng.uniform(r, w - r), np.float32)
    y = np.full(n, rng.uniform(r, h - r), np.float32)
    radius = np.full(n, r, np.float32)
    angle = np.full(n, rng.uniform(0, 2 * np.pi), np.float32)
    bright = np.ones(n, np.float32)
    kind, _, how = plan.label.partition("_")
    if kind == "moving":
        sign = -1.0 if how in ("left", "up") else 1.0
        dim = w if how in ("left", "right") else h
        travel = float(rng.uniform(0.85, 1.0)) * (dim - 2 * r - 2)
        centre = rng.uniform(r + 1 + travel / 2, dim - r - 1 - travel / 2)
        (x if how in ("left", "right") else y)[:] = centre + sign * travel / 2 * s
    elif plan.label in ("growing", "shrinking"):
        ratio = float(rng.uniform(2.2, 3.0))  # end radius / start radius
        sign = 1.0 if plan.label == "growing" else -1.0
        r_mid = min(h, w) * 0.42 / np.sqrt(ratio)  # the largest radius still fits the frame
        radius = (r_mid * np.exp(sign * np.log(ratio) / 2 * s)).astype(np.float32)
        x[:], y[:] = rng.uniform(0.45, 0.55) * w, rng.uniform(0.45, 0.55) * h
    elif kind == "rotating":
        turns = float(rng.uniform(0.6, 1.2))  # over the whole video: < 90 degrees between frames
        sign = -1.0 if how == "clockwise" else 1.0  # image y points down: +angle is clockwise
        angle = angle - sign * np.pi * turns * s
        radius[:] = 0.3 * min(h, w)
        x[:], y[:] = rng.uniform(0.4, 0.6) * w, rng.uniform(0.4, 0.6) * h
    elif kind == "flickering":
        hz = rng.uniform(0.5, 1.0) if how == "slow" else rng.uniform(3.0, 4.5)
        t = np.arange(n, dtype=np.float32) / plan.fps
        bright = 0.55 + 0.45 * np.cos(2 * np.pi * hz * t + rng.uniform(0, 2 * np.pi))
    else:
        raise AssertionError(f"SyntheticSpec validated the class names; got {plan.label!r}")
    return {"x": x, "y": y, "radius": radius, "angle": angle.astype(np.float32),
            "bright": bright.astype(np.float32)}


def render_video(plan: VideoPlan) -> np.ndarray:
    """The plan's frames, uint8 [T, H, W, 3] RGB."""
    if plan.label in LONGRANGE_CLASSES:
        return _render_relation(plan)
    return _render_blob(plan)


def _render_blob(plan: VideoPlan) -> np.ndarray:
    """One textured blob moving as its motion class says, uint8 [T, H, W, 3]."""
    rng = np.random.default_rng(plan.seed)
    h, w = plan.height, plan.width
    background = _background(rng, h, w)
    colours = rng.uniform(0.0, 1.0, size=(2, 3)).astype(np.float32)
    colours[1] = 1.0 - colours[0]  # the two stripe colours contrast with each other
    aspect = float(rng.uniform(0.6, 0.85))  # an ellipse: its orientation shows rotation
    stripes = float(rng.uniform(2.0, 3.5))  # stripes across the blob's long axis
    path = _trajectory(plan, rng)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    out = np.empty((plan.num_frames, h, w, 3), np.uint8)
    for t in range(plan.num_frames):
        r, a = path["radius"][t], path["angle"][t]
        dx, dy = xx - path["x"][t], yy - path["y"][t]
        # Blob-local coordinates (rotated with the blob, scaled by its radius).
        u = (np.cos(a) * dx + np.sin(a) * dy) / r
        v = (-np.sin(a) * dx + np.cos(a) * dy) / (r * aspect)
        rho = np.sqrt(u * u + v * v)
        alpha = np.clip((1.0 - rho) * r / 1.5, 0.0, 1.0)[..., None]  # ~1.5 px soft edge
        band = (np.sin(np.pi * stripes * u) > 0)[..., None]
        blob = np.where(band, colours[0], colours[1]) * path["bright"][t]
        out[t] = (255.0 * (alpha * blob + (1.0 - alpha) * background) + 0.5).astype(np.uint8)
    return out


# ------------------------------------------------------------------------- the longrange set

# Layout of the longrange videos, as fractions of the (square) frame's side.
LONGRANGE_GEOMETRY = {
    "keep": (0.2, 0.8),  # every train crop keeps this band of a square frame (a 64 crop of <= 80 px)
    "side": 0.11,  # side of an object (7 px at 64 px)
    "travel": 0.12,  # one motion's length (8 px at 64 px, ~1.3 px a frame)
    "apart": 0.3,  # the two paths' middles differ by this much in x or y at least: opposite sides or corners
}
DIRECTIONS = ((1.0, 0.0), (-1.0, 0.0), (0.0, 1.0), (0.0, -1.0))  # (dx, dy), y down: right, left, down, up
MAX_LAYOUT_TRIES = 1000  # ~7% of draws are far enough apart: 1000 misses in a row never happen


def _relation_times(num_frames: int, rng: np.random.Generator) -> tuple[int, int]:
    """Last still frame before A's motion and before B's: A early, B at least ``pause`` frames later."""
    t = LONGRANGE_TIMING
    first, last = relation_frame_range(num_frames)
    start_a = first + int(rng.integers(0, t["a_jitter"]))
    start_b = int(rng.integers(start_a + t["move"] + t["pause"], last + 1))
    return start_a, start_b


def _relation_middles(rng: np.random.Generator) -> np.ndarray:
    """float64 [2, 2]: the middle (x, y) of A's and of B's path, in frame fractions, ``apart`` apart.

    Drawn without looking at the directions: wherever an object moves from its middle, it stays whole
    inside the kept square, and where the objects sit says nothing about how they will move.
    """
    g = LONGRANGE_GEOMETRY
    reach = (g["side"] + g["travel"]) / 2  # from a path's middle to the far edge of the object
    lo, hi = g["keep"][0] + reach, g["keep"][1] - reach
    for _ in range(MAX_LAYOUT_TRIES):
        middles = rng.uniform(lo, hi, size=(2, 2))  # (object, xy)
        if np.abs(middles[0] - middles[1]).max() >= g["apart"]:
            return middles
    raise AssertionError(f"no layout {g['apart']} apart in {MAX_LAYOUT_TRIES} draws: {g}")


def _relation_paths(plan: VideoPlan, rng: np.random.Generator) -> np.ndarray:
    """float32 [2, T, 2]: centre (x, y) of objects A and B in every frame, in frame fractions."""
    same = plan.label == "same_direction"
    dir_a = int(rng.integers(4))
    dir_b = dir_a if same else (dir_a + int(rng.integers(1, 4))) % 4  # one of the 3 others
    middles = _relation_middles(rng)  # (2, 2)
    starts = _relation_times(plan.num_frames, rng)
    frames = np.arange(plan.num_frames, dtype=np.float64)
    travel = LONGRANGE_GEOMETRY["travel"]
    paths = np.empty((2, plan.num_frames, 2), np.float32)
    for k, (d, t0) in enumerate(zip((dir_a, dir_b), starts)):
        direction = np.asarray(DIRECTIONS[d])
        done = np.clip((frames - t0) / LONGRANGE_TIMING["move"], 0.0, 1.0)  # (T,): 0 still .. 1 arrived
        paths[k] = middles[k] + travel * (done[:, None] - 0.5) * direction  # (T, 2)
    return paths


def _square_alpha(xx: np.ndarray, yy: np.ndarray, centre: np.ndarray, side: float) -> np.ndarray:
    """Coverage [H, W] of an axis-aligned square of ``side`` px at ``centre`` (px): 1 px soft edges,
    so that sub-pixel steps show."""
    ax = np.clip(side / 2 + 0.5 - np.abs(xx - centre[0]), 0.0, 1.0)
    ay = np.clip(side / 2 + 0.5 - np.abs(yy - centre[1]), 0.0, 1.0)
    return ax * ay


def _render_relation(plan: VideoPlan) -> np.ndarray:
    """Two bright squares on a darkened textured background moving as ``_relation_paths`` says."""
    rng = np.random.default_rng(plan.seed)
    h, w = plan.height, plan.width
    background = 0.6 * _background(rng, h, w)  # <= ~0.6: the bright squares stand out
    colours = rng.uniform(0.75, 1.0, size=(2, 3)).astype(np.float32)
    paths = _relation_paths(plan, rng) * np.array([w, h], np.float32)  # (2, T, 2) in px
    side = LONGRANGE_GEOMETRY["side"] * min(h, w)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    out = np.empty((plan.num_frames, h, w, 3), np.uint8)
    for t in range(plan.num_frames):
        frame = background
        for k in range(2):
            alpha = _square_alpha(xx, yy, paths[k, t], side)[..., None]  # (H, W, 1)
            frame = alpha * colours[k] + (1.0 - alpha) * frame
        out[t] = (255.0 * frame + 0.5).astype(np.uint8)
    return out
