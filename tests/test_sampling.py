"""Frame samplers: windows, strides, eval spread, looping of short videos (docs/paper.md)."""
import numpy as np
import pytest

from nlray.data.sampling import eval_indices, train_indices, window_size


@pytest.mark.parametrize("frames,stride", [(32, 2), (128, 1), (8, 4)])
def test_train_window_is_strided_run_inside_video(frames, stride):
    rng = np.random.default_rng(0)
    starts = set()
    for _ in range(200):
        idx = train_indices(300, frames=frames, stride=stride, rng=rng)
        assert idx.shape == (frames,) and idx.dtype == np.int64
        assert (np.diff(idx) == stride).all()  # every stride-th frame of one window
        assert idx[0] >= 0 and idx[-1] + stride <= 300  # the whole window fits
        starts.add(int(idx[0]))
    assert min(starts) < 20 and max(starts) > 300 - frames * stride - 20  # starts cover the range


def test_train_start_is_uniform():
    rng = np.random.default_rng(1)
    starts = np.array([train_indices(100, frames=8, stride=2, rng=rng)[0] for _ in range(8500)])
    counts = np.bincount(starts, minlength=85)
    assert len(counts) == 85  # starts 0..84 == num_frames - window
    assert counts.min() > 50 and counts.max() < 150  # ~100 each


def test_short_video_is_looped_not_dropped():
    rng = np.random.default_rng(0)
    idx = train_indices(20, frames=32, stride=2, rng=rng)
    assert idx.tolist() == [(2 * k) % 20 for k in range(32)]
    ev = eval_indices(20, frames=32, stride=2, num_clips=10)
    assert ev.shape == (10, 32)
    assert ev.max() < 20 and (ev == ev[0]).all()


def test_window_exactly_the_video():
    rng = np.random.default_rng(0)
    assert train_indices(64, frames=32, stride=2, rng=rng).tolist() == list(range(0, 64, 2))
    assert window_size(frames=32, stride=2) == 64 and window_size(frames=128, stride=1) == 128


def test_eval_clips_evenly_centred_and_inside():
    ev = eval_indices(300, frames=32, stride=2, num_clips=10)
    assert ev.shape == (10, 32)
    assert (np.diff(ev, axis=1) == 2).all()
    centres = (ev[:, 0] + ev[:, -1] + 2) / 2  # centre of each 64-frame window
    inside = centres[1:-1]  # the end clips are clamped into the video
    assert np.allclose(inside, (np.arange(1, 9) + 0.5) * 30, atol=2)  # floor, then to the stride grid
    assert (ev[:, 0] % 2 == 0).all()  # shared grid: the 10 clips use 150 distinct frames
    assert len(np.unique(ev)) == 150
    assert ev[0, 0] == 0 and ev[-1, -1] + 2 == 300  # first/last windows clamped to the ends
    one = eval_indices(300, frames=128, stride=1, num_clips=1)
    assert one[0, 0] == 86 and one[0, -1] == 213  # centred: (300 - 128) // 2


@pytest.mark.parametrize("bad", [dict(num_frames=0), dict(frames=0), dict(stride=-1)])
def test_bad_arguments_name_the_value(bad):
    args = dict(num_frames=10, frames=4, stride=1) | bad
    name, value = next(iter(bad.items()))
    with pytest.raises(ValueError, match=f"{name}={value}"):
        train_indices(args.pop("num_frames"), rng=np.random.default_rng(0), **args)
    with pytest.raises(ValueError, match="num_clips=0"):
        eval_indices(10, frames=4, stride=1, num_clips=0)
