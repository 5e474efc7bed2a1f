"""The paper's ablation tables as data (docs/paper.md "Results to compare against"), torch-free.

A table is rows; a row is a name, what it changes relative to the base preset, and the paper's figure
(Kinetics-400 val top-1, 30-view) with the table it comes from. The non-local blocks of a row are named
symbolically (``"1"``, ``"5"``, ``"res3"`` ...) and placed for the base's layout by ``placement``:

* the paper's layout (no ``model.stage_depths``: ResNet-50/101 as in Table 1): ``model.nonlocal_blocks``
  1 / 5 / 10 (the placement tables of nlray/models/resnet_layout.py);
* a shrunk layout (``model.stage_depths`` set, e.g. demo's [1, 1, 1, 1]), which cannot hold 5 or 10 blocks:
  the same rules applied to its stages, written out as ``model.nonlocal_placement`` (see ``LAYOUT_NOTE``).

The 128-frame rows of 2g are fine-tuned from the 32-frame row of the same seed (``init_from``), as the
paper does; their recipe is the base layout's long-clip preset (LONG_CLIP).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

from nlray import choices
from nlray.config import Config

# Keys that define a row: a command-line override may not change one that a table's rows vary.
ROW_KEYS = ("model.arch", "model.nonlocal_blocks", "model.nonlocal_placement", "model.nl_instantiation",
            "model.nl_mode", "data.frames", "data.frame_stride")

LAYOUT_NOTE = ("On a shrunk layout (model.stage_depths set, e.g. the demo preset's [1,1,1,1]) the paper's "
               "placements are applied to its stages: 1 block (or 1 block in resN) goes just before the last "
               "residual block of the stage (res4 for '1'), after its only block when it has one; 5 blocks go "
               "after every other block of res3 and res4 (odd indices, as the paper's 1,3 / 1,3,5) and 10 after "
               "every block of res3 and res4; a stage too short for 'every other' gets its blocks. So on "
               "[1,1,1,1]: 1 block = [[4,0]], 5 = 10 = [[3,0],[4,0]] (the 5- and 10-block rows are the same "
               "network there).")

# 32x2 -> 128x1, as in the long-clip presets (a test checks these against the YAML files).
LONG_CLIP = {
    # paper layout: nlray/configs/{c2d,i3d,nl_i3d}_r50_128f.yaml (2 clips/GPU, BN frozen, lr 0.0025 at 16)
    "paper": ("model.pretrained=none", "data.frames=128", "data.frame_stride=1", "data.batch_size=2",
              "train.base_lr=0.0025", "train.base_batch=16", "train.freeze_bn=true",
              "train.activation_checkpointing=true"),
    # shrunk layout: nlray/configs/demo_128f.yaml (4x the demo's 16 frames, consecutive)
    "shrunk": ("data.frames=64", "data.frame_stride=1", "data.batch_size=2", "train.steps=300",
               "train.base_lr=0.0025", "train.base_batch=4", "train.lr_milestones=[225]", "train.warmup_steps=0",
               "train.freeze_bn=true", "train.precise_bn_batches=20", "train.activation_checkpointing=true",
               "train.checkpoint_every=150"),
}


@dataclass(frozen=True)
class Paper:
    """The paper's top-1 (%) for a row, and where it comes from (table and depth)."""

    top1: float
    source: str  # e.g. "2a R50"


@dataclass(frozen=True)
class Row:
    name: str
    label: str  # the paper's wording
    overrides: tuple[str, ...]  # layout-independent dotted overrides (arch, instantiation, mode)
    nonlocal_: str  # "0" | "1" | "5" | "10" | "res2".."res5": see ``placement``
    paper: dict[int, Paper] = field(default_factory=dict)  # by ResNet depth (50 / 101)
    long_clip: bool = False  # 128x1, the base layout's LONG_CLIP recipe
    init_from: str = ""  # a row of the same table whose run (same seed) initialises this one


@dataclass(frozen=True)
class Table:
    name: str  # docs/paper.md's letter
    title: str
    rows: tuple[Row, ...]
    notes: str = ""

    def row(self, name: str) -> Row:
        for r in self.rows:
            if r.name == name:
                return r
        raise ValueError(f"table {self.name} has no row {name!r}; rows: {[r.name for r in self.rows]}")


def _p(r50: Optional[tuple[float, str]] = None, r101: Optional[tuple[float, str]] = None) -> dict[int, Paper]:
    return {d: Paper(*v) for d, v in ((50, r50), (101, r101)) if v is not None}


C2D, I3D = ("model.arch=c2d",), ("model.arch=i3d",)
EMB = ("model.nl_instantiation=embedded_gaussian", "model.nl_mode=spacetime")

TABLES: dict[str, Table] = {t.name: t for t in [
    Table("2a", "Instantiations: 1 non-local block in C2D", (
        Row("c2d", "C2D baseline", C2D, "0", _p((71.8, "2a R50"), (73.1, "2c R101"))),
        Row("gaussian", "Gaussian", C2D + ("model.nl_instantiation=gaussian",), "1", _p((72.5, "2a R50"))),
        Row("embedded_gaussian", "Gaussian, embed", C2D + ("model.nl_instantiation=embedded_gaussian",), "1",
            _p((72.7, "2a R50"))),
        Row("dot_product", "dot-product", C2D + ("model.nl_instantiation=dot_product",), "1",
            _p((72.9, "2a R50"))),
        Row("concatenation", "concatenation", C2D + ("model.nl_instantiation=concatenation",), "1",
            _p((72.8, "2a R50"))),
    ), "All rows C2D, spacetime; 1 block in res4."),
    Table("2b", "Which stage: 1 non-local block in C2D", tuple(
        Row(f"res{s}", f"res{s}", C2D + EMB, f"res{s}", _p((f, "2b R50")))
        for s, f in zip((2, 3, 4, 5), (72.7, 72.9, 72.7, 72.3))),
        "Embedded Gaussian; the block goes just before the last residual block of the stage."),
    Table("2c", "Deeper non-local models (C2D)", (
        Row("c2d", "baseline", C2D, "0", _p((71.8, "2a R50"), (73.1, "2c R101"))),
        Row("1block", "1-block", C2D + EMB, "1", _p((72.7, "2c R50"), (74.3, "2c R101"))),
        Row("5block", "5-block", C2D + EMB, "5", _p((73.8, "2c R50"), (75.1, "2c R101"))),
        Row("10block", "10-block", C2D + EMB, "10", _p((74.3, "2c R50"), (75.1, "2c R101"))),
    ), "docs/paper.md Table 2c gives the R50 baseline in 2a (71.8)."),
    Table("2d", "Space vs. time vs. spacetime (C2D, 5 blocks)", (
        Row("space", "space-only", C2D + ("model.nl_instantiation=embedded_gaussian", "model.nl_mode=space"),
            "5", _p((72.9, "2d R50"))),
        Row("time", "time-only", C2D + ("model.nl_instantiation=embedded_gaussian", "model.nl_mode=time"),
            "5", _p((73.1, "2d R50"))),
        Row("spacetime", "spacetime", C2D + EMB, "5", _p((73.8, "2d R50"))),
    )),
    Table("2e", "Non-local C2D vs. 3D convolutions", (
        Row("c2d", "C2D", C2D, "0", _p((71.8, "2a R50"), (73.1, "2e R101"))),
        Row("i3d3x3x3", "I3D 3x3x3", ("model.arch=i3d3x3x3",), "0", _p(r101=(74.1, "2e R101"))),
        Row("i3d", "I3D 3x1x1", I3D, "0", _p((73.3, "2f R50"), (74.4, "2e R101"))),
        Row("nl_c2d", "NL C2D, 5-block", C2D + EMB, "5", _p((73.8, "2c R50"), (75.1, "2e R101"))),
    ), "docs/paper.md Table 2e is R101 only; on an R50 base the figures come from 2a/2c/2f (none for I3D 3x3x3)."),
    Table("2f", "Non-local I3D vs. I3D", (
        Row("i3d", "I3D", I3D, "0", _p((73.3, "2f R50"), (74.4, "2f R101"))),
        Row("nl_i3d", "NL I3D", I3D + EMB, "5", _p((74.9, "2f R50"), (76.0, "2f R101"))),
    )),
    Table("2g", "Longer clips: 32x2 -> 128x1 (fine-tuned from the 32-frame row, same seed)", tuple(
        row for name, label, arch, nl, f32, f128 in (
            ("c2d", "C2D", C2D, "0", ((71.8, "2a R50"), (73.1, "2c R101")), ((73.8, "2g R50"), (75.3, "2g R101"))),
            ("i3d", "I3D", I3D, "0", ((73.3, "2f R50"), (74.4, "2f R101")), ((74.9, "2g R50"), (76.4, "2g R101"))),
            ("nl_i3d", "NL I3D", I3D + EMB, "5", ((74.9, "2f R50"), (76.0, "2f R101")),
             ((76.5, "2g R50"), (77.7, "2g R101"))))
        for row in (Row(f"{name}_32f", f"{label} 32x2", arch, nl, _p(*f32)),
                    Row(f"{name}_128f", f"{label} 128x1", arch, nl, _p(*f128), long_clip=True,
                        init_from=f"{name}_32f"))),
        "The 32x2 rows' figures are from 2a/2c/2f. A 128x1 row starts from its 32x2 row's final weights "
        "(train.init_from), BN frozen, with the long-clip recipe of the base's layout (demo: demo_128f)."),
    Table("3", "C2D / I3D / NL C2D / NL I3D (figures from docs/paper.md 2a, 2c, 2e, 2f)", (
        Row("c2d", "C2D", C2D, "0", _p((71.8, "2a R50"), (73.1, "2e R101"))),
        Row("i3d", "I3D", I3D, "0", _p((73.3, "2f R50"), (74.4, "2e R101"))),
        Row("nl_c2d", "NL C2D, 5-block", C2D + EMB, "5", _p((73.8, "2c R50"), (75.1, "2e R101"))),
        Row("nl_i3d", "NL I3D, 5-block", I3D + EMB, "5", _p((74.9, "2f R50"), (76.0, "2f R101"))),
    )),
]}


def get_table(name: str) -> Table:
    if name not in TABLES:
        raise ValueError(f"table {name!r} is not one of {list(TABLES)} (docs/paper.md's letters)")
    return TABLES[name]


def stage_depths(cfg: Config) -> list[int]:
    return list(cfg.model.stage_depths or choices.STAGE_DEPTHS[cfg.model.depth])


def is_shrunk(cfg: Config) -> bool:
    """A layout other than the paper's ResNet-50/101 (model.stage_depths set to something else)."""
    return list(stage_depths(cfg)) != list(choices.STAGE_DEPTHS[cfg.model.depth])


def placement(nonlocal_: str, depths: Sequence[int]) -> list[list[int]]:
    """[[stage, block], ...] for a symbolic row placement on a layout of ``depths`` (res2..res5)."""
    def before_last(stage: int) -> list[int]:  # just before the stage's last block, or after its only one
        return [stage, max(depths[stage - 2] - 2, 0)]

    def every_other(stage: int) -> list[list[int]]:  # odd indices as the paper's 1,3(,5); all if none
        return [[stage, i] for i in range(1, depths[stage - 2], 2)] or [[stage, 0]]

    if nonlocal_ == "0":
        return []
    if nonlocal_ == "1":
        return [before_last(4)]
    if nonlocal_ in ("res2", "res3", "res4", "res5"):
        return [before_last(int(nonlocal_[3]))]
    if nonlocal_ == "5":
        return every_other(3) + every_other(4)
    if nonlocal_ == "10":
        return [[s, i] for s in (3, 4) for i in range(depths[s - 2])]
    raise ValueError(f"nonlocal_={nonlocal_!r} is not one of ['0', '1', '5', '10', 'res2'..'res5']")


def nonlocal_overrides(nonlocal_: str, base: Config) -> list[str]:
    """The paper's count on its own layout (resnet_layout.py); written-out positions on any other."""
    if nonlocal_ in ("0", "1", "5", "10") and not is_shrunk(base):
        return [f"model.nonlocal_blocks={nonlocal_}", "model.nonlocal_placement=null"]
    where = placement(nonlocal_, stage_depths(base))
    return ["model.nonlocal_blocks=0", f"model.nonlocal_placement={where}".replace(" ", "")]


def row_overrides(row: Row, base: Config) -> list[str]:
    """What ``row`` changes relative to the loaded ``base`` preset (before the command line's overrides)."""
    out = list(row.overrides) + nonlocal_overrides(row.nonlocal_, base)
    if row.long_clip:
        out += LONG_CLIP["shrunk" if is_shrunk(base) else "paper"]
    return out


def paper_figure(row: Row, base: Config) -> Optional[Paper]:
    """The paper's figure at the base's depth (a shrunk layout is compared with its nominal depth)."""
    return row.paper.get(base.model.depth)


def select_rows(table: Table, names: Sequence[str] = ()) -> list[Row]:
    """The rows named (all when none), in the table's order, with the rows they initialise from."""
    if not names:
        return list(table.rows)
    wanted = {table.row(n).name for n in names}
    wanted |= {table.row(n).init_from for n in names if table.row(n).init_from}
    return [r for r in table.rows if r.name in wanted]
