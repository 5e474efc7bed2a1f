"""nlray.models.summary and ``python -m nlray.models``: parameters, multiply-adds (against a count
written out here from layer shapes) and the non-local positions of docs/paper.md "Placement"."""
import json
import subprocess
import sys

import pytest
import torch
from torch import nn

from nlray.config import load_config
from nlray.models import NonLocalBlock, build_model
from nlray.models.__main__ import main
from nlray.models.summary import format_summary, summarize_config


def macs_by_hand(preset: str, *overrides: str) -> int:
    """Convolutions and fc from their output sizes; each non-local block from its input size."""
    cfg = load_config(preset, ["model.pretrained=none", *overrides])
    with torch.device("meta"):
        model = build_model(cfg.model, num_classes=400).eval()
    total = []

    def conv(m, _inp, out):
        total.append(out[0].numel() * m.weight[0].numel())  # outputs x (C_in x kT x kH x kW)

    def linear(m, _inp, out):
        total.append(m.in_features * m.out_features)

    def nonlocal_(m, inp, _out):
        c, t, h, w = inp[0].shape[1:]
        n, ci = t * h * w, c // 2
        n_prime = t if m.mode == "time" else t * ((h + 1) // 2) * ((w + 1) // 2)  # keys per query
        total.append(4 * n * c * ci)  # θ, φ, g (before pooling) and W_z: 1x1x1 convs on N positions
        total.append(2 * n * n_prime * ci)  # θᵀφ and the weighted sum of g

    nl_convs = {id(c) for m in model.modules() if isinstance(m, NonLocalBlock) for c in m.modules()}
    for m in model.modules():
        if isinstance(m, nn.Conv3d) and id(m) not in nl_convs:
            m.register_forward_hook(conv)
        elif isinstance(m, nn.Linear):
            m.register_forward_hook(linear)
        elif isinstance(m, NonLocalBlock):
            m.register_forward_hook(nonlocal_)
    with torch.no_grad():
        model(torch.empty(1, 3, cfg.data.frames, cfg.data.crop_size, cfg.data.crop_size, device="meta"))
    return sum(total)


@pytest.mark.parametrize("preset, overrides", [("nl_i3d_r50_32f", ()), ("c2d_r101_32f", ()),
                                               ("i3d3x3x3_r50_32f", ()), ("demo", ()),
                                               ("nl_c2d_r50_32f", ("model.nl_mode=time",))])
def test_multiply_adds_match_a_count_by_hand(preset, overrides):
    s = summarize_config(preset, list(overrides))
    assert s.macs == macs_by_hand(preset, *overrides)


def test_published_sizes():
    """mmaction2's NL-I3D R50 (35.4 M, 59.3 G) is counted at 32x256x256; docs/paper.md's C2D R101: 43.2 M, 34.2 G."""
    nl_i3d = summarize_config("nl_i3d_r50_32f", ["data.crop_size=256"])
    assert nl_i3d.parameters / 1e6 == pytest.approx(35.4, rel=0.02)
    assert nl_i3d.macs / 1e9 == pytest.approx(59.3, rel=0.02)
    c2d = summarize_config("c2d_r101_32f")
    assert c2d.parameters / 1e6 == pytest.approx(43.2, rel=0.02)
    assert c2d.macs / 1e9 == pytest.approx(34.2, rel=0.05)  # ours counts the fc and shortcut convs too


def test_nonlocal_positions_at_128_frames():
    """docs/paper.md: a res3 block of a 128-frame clip pairs 12,544 positions with 3,136 (after subsampling)."""
    s = summarize_config("nl_i3d_r50_128f")
    res3 = [site for site in s.nonlocal_sites if site.name.startswith("res3")]
    assert [(x.sequences, x.n, x.n_prime, x.channels) for x in res3] == [(1, 12544, 3136, 512)] * 2
    grouped = summarize_config("nl_i3d_r50_128f", ["model.nl_temporal_groups=4"])
    assert (grouped.nonlocal_sites[0].sequences, grouped.nonlocal_sites[0].n) == (4, 3136)
    assert grouped.nonlocal_sites[2].sequences == 1  # only res3 is grouped
    space = summarize_config("nl_c2d_r50_32f", ["model.nl_mode=space"]).nonlocal_sites[0]
    assert (space.sequences, space.n, space.n_prime) == (4, 784, 196)
    time = summarize_config("nl_c2d_r50_32f", ["model.nl_mode=time"]).nonlocal_sites[0]
    assert (time.sequences, time.n, time.n_prime) == (784, 4, 4)  # time mode: no subsampling
    assert s.stage_outputs["res3"] == (512, 16, 28, 28)
    assert "res3[1]" in format_summary(s) and "12544" in format_summary(s)


def test_cli_prints_parameters_macs_and_positions():
    text = subprocess.run([sys.executable, "-m", "nlray.models", "nl_i3d_r50_32f"], capture_output=True,
                          text=True, timeout=300)
    assert text.returncode == 0, text.stderr
    assert "35.40 M" in text.stdout and "multiply-adds" in text.stdout and "N'=784" in text.stdout


def test_cli_json_and_errors(capsys):
    assert main(["demo", "data.frames=8", "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["clip"] == [8, 64, 64] and len(record["nonlocal_sites"]) == 2
    assert main(["no_such_preset"]) == 2
    err = capsys.readouterr().err
    assert "no_such_preset" in err and "nl_i3d_r50_32f" in err
    assert main(["demo", "model.arch=c3d"]) == 2
    err = capsys.readouterr().err
    assert "c3d" in err and "i3d3x3x3" in err
