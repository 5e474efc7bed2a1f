"""Spatial transforms, checked against PIL / torchvision and against positions coded in the pixels."""
import numpy as np
import pytest
import torch

from nlray.data.transforms import (flip_label_permutation, flip_with_label, normalize_on_device, random_crop,
                                   random_flip, short_side_scale, spatial_crops, train_crop_flip)

LABELS = ["growing", "moving_left", "moving_right", "rotating_clockwise", "rotating_counterclockwise"]


def coded_clip(t=3, h=40, w=60):
    """uint8 [T, H, W, 3] whose pixel (y, x) holds y in channel 0 and x in channel 1."""
    clip = np.zeros((t, h, w, 3), np.uint8)
    clip[..., 0] = np.arange(h)[None, :, None]
    clip[..., 1] = np.arange(w)[None, None, :]
    clip[..., 2] = np.arange(t)[:, None, None]
    return clip


def test_short_side_scale_matches_pil():
    from PIL import Image

    rng = np.random.default_rng(0)
    clip = rng.integers(0, 256, (2, 36, 64, 3), dtype=np.uint8)
    clip = np.asarray(torch.nn.functional.avg_pool2d(  # smooth it: a natural-looking image
        torch.from_numpy(clip).permute(0, 3, 1, 2).float(), 5, 1, 2).permute(0, 2, 3, 1)).astype(np.uint8)
    for size in (18, 48):  # down and up
        got = short_side_scale(clip, size=size)
        want_w = round(64 * size / 36)
        assert got.shape == (2, size, want_w, 3) and got.dtype == np.uint8
        ref = np.stack([np.asarray(Image.fromarray(f).resize((want_w, size), Image.BILINEAR)) for f in clip])
        assert np.abs(got.astype(int) - ref).mean() < 1.0 and np.abs(got.astype(int) - ref).max() <= 12
    assert short_side_scale(clip, size=36) is clip  # already that size: untouched


def test_random_crop_is_a_window_at_every_position():
    clip = coded_clip()
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(2000):
        crop = random_crop(clip, size=32, rng=rng)
        y, x = int(crop[0, 0, 0, 0]), int(crop[0, 0, 0, 1])  # the pixel says where it came from
        np.testing.assert_array_equal(crop, clip[:, y:y + 32, x:x + 32])
        seen.add((y, x))
    assert seen == {(y, x) for y in range(9) for x in range(29)}


def test_random_flip_half_the_time():
    clip = coded_clip()
    rng = np.random.default_rng(0)
    flips = 0
    for _ in range(1000):
        out = random_flip(clip, rng=rng)
        if out[0, 0, 0, 1] == 59:
            np.testing.assert_array_equal(out, clip[:, :, ::-1])
            flips += 1
        else:
            np.testing.assert_array_equal(out, clip)
    assert 430 < flips < 570


def test_flip_label_permutation_swaps_the_named_pairs_only():
    pairs = [["moving_left", "moving_right"], ["rotating_counterclockwise", "rotating_clockwise"]]
    perm = flip_label_permutation(LABELS, pairs)
    assert perm.dtype == np.int64
    mirrored = [LABELS[i] for i in perm]  # what each class looks like in a mirror
    assert mirrored == ["growing", "moving_right", "moving_left", "rotating_counterclockwise", "rotating_clockwise"]
    assert (perm[perm] == np.arange(len(LABELS))).all()  # mirroring twice changes nothing
    assert flip_label_permutation(LABELS, []).tolist() == list(range(len(LABELS)))


@pytest.mark.parametrize("pairs,match", [
    ([["moving_left", "moving_sideways"]],
     r"'moving_sideways' is not a label; labels: \['growing', 'moving_left', .*'rotating_counterclockwise'\]"),
    ([["moving_left", "moving_right"], ["moving_left", "growing"]], "'moving_left' is already in another pair"),
    ([["growing", "growing"]], "two different label names"),
    ([["growing"]], "two different label names"),
])
def test_flip_label_permutation_names_the_bad_value(pairs, match):
    with pytest.raises(ValueError, match=match):
        flip_label_permutation(LABELS, pairs)


def test_flip_with_label_gives_a_mirrored_clip_its_partner_label():
    clip = coded_clip()
    perm = flip_label_permutation(LABELS, [["moving_left", "moving_right"]])
    rng = np.random.default_rng(1)
    seen = {}
    for _ in range(1000):
        label = int(rng.integers(0, len(LABELS)))
        out, got = flip_with_label(clip, label, rng=rng, permutation=perm)
        mirrored = int(out[0, 0, 0, 1]) == 59  # the pixel says which column it came from
        np.testing.assert_array_equal(out, clip[:, :, ::-1] if mirrored else clip)
        want = {"moving_left": "moving_right", "moving_right": "moving_left"}.get(LABELS[label], LABELS[label])
        assert LABELS[got] == (want if mirrored else LABELS[label])
        seen[mirrored] = seen.get(mirrored, 0) + 1
    assert 430 < seen[True] < 570
    assert flip_with_label(clip, -1, rng=np.random.default_rng(0), p=1.0)[1] == -1  # unlabelled stays so
    assert flip_with_label(clip, 1, rng=rng, p=1.0)[1] == 1  # no permutation: the label is kept
    for _ in range(100):  # p=0: never mirrored
        out, got = flip_with_label(clip, 1, rng=rng, permutation=perm, p=0.0)
        assert out is clip and got == 1


def test_train_crop_flip_contiguous_uint8():
    out = train_crop_flip(coded_clip(), size=32, rng=np.random.default_rng(3))
    assert out.shape == (3, 32, 32, 3) and out.dtype == np.uint8 and out.flags.c_contiguous
    xs = out[0, 0, :, 1].astype(int)
    assert (np.abs(np.diff(xs)) == 1).all()  # consecutive columns, one way or the other


def test_three_crops_cover_the_long_side():
    land = spatial_crops(coded_clip(h=40, w=60), size=40, num_crops=3)
    assert land.shape == (3, 3, 40, 40, 3)
    assert [int(c[0, 0, 0, 1]) for c in land] == [0, 10, 20]  # left, centre, right
    portrait = spatial_crops(coded_clip(h=60, w=40), size=40, num_crops=3)
    assert [int(c[0, 0, 0, 0]) for c in portrait] == [0, 10, 20]  # top, centre, bottom
    centre = spatial_crops(coded_clip(h=40, w=60), size=30, num_crops=1)
    assert (int(centre[0, 0, 0, 0, 0]), int(centre[0, 0, 0, 0, 1])) == (5, 15)


@pytest.mark.parametrize("size", [0, 41])
def test_crop_that_does_not_fit_names_the_sizes(size):
    with pytest.raises(ValueError, match=f"crop size {size} does not fit frames of 40x60"):
        spatial_crops(coded_clip(h=40, w=60), size=size, num_crops=3)
    with pytest.raises(ValueError, match=f"crop size {size}"):
        random_crop(coded_clip(h=40, w=60), size=size, rng=np.random.default_rng(0))


def test_normalize_on_device_matches_torchvision():
    import torchvision.transforms.functional as TF

    batch = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (2, 4, 8, 10, 3), dtype=np.uint8))
    out = normalize_on_device(batch, dtype=torch.float32)
    assert out.shape == (2, 3, 4, 8, 10) and out.dtype == torch.float32 and out.is_contiguous()
    for b in range(2):
        for t in range(4):
            frame = batch[b, t].permute(2, 0, 1).float() / 255  # (C, H, W) in [0, 1]
            ref = TF.normalize(frame, mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
            torch.testing.assert_close(out[b, :, t], ref, atol=1e-5, rtol=1e-5)
    half = normalize_on_device(batch, dtype=torch.bfloat16)
    assert half.dtype == torch.bfloat16
    torch.testing.assert_close(half.float(), out, atol=0.03, rtol=0.01)


def test_normalize_rejects_float_input():
    with pytest.raises(ValueError, match="uint8 batch"):
        normalize_on_device(torch.zeros(1, 2, 3, 4, 3), dtype=torch.float32)
    with pytest.raises(ValueError, match="uint8 clip"):
        short_side_scale(np.zeros((2, 3, 4, 3), np.float32), size=2)
