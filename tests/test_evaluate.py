"""nlray.train.evaluate.VideoScores: view scores -> clip-level and video-level top-k, worked by hand."""
import numpy as np
import pytest

from nlray.train.evaluate import VideoScores


def test_video_level_averages_softmax_over_views_clip_level_scores_each_view():
    s = VideoScores(num_classes=6)
    # video 0 (label 2): views vote 2, 1, 2 -> clip top-1 hits 2/3; the mean favours 2 -> video hit
    s.add(np.array([0, 0, 0]), np.array([2, 2, 2]), np.array([
        [0.0, 0.1, 0.9, 0.0, 0.0, 0.0], [0.0, 0.6, 0.4, 0.0, 0.0, 0.0], [0.0, 0.2, 0.8, 0.0, 0.0, 0.0]]))
    # video 1 (label 0) over two batches: views hit, miss; mean 0.425 vs 0.575 on class 3 -> video miss
    s.add(np.array([1]), np.array([0]), np.array([[0.55, 0.0, 0.0, 0.45, 0.0, 0.0]]))
    s.add(np.array([1]), np.array([0]), np.array([[0.3, 0.0, 0.0, 0.7, 0.0, 0.0]]))
    m = s.metrics()
    assert m["clip_top1"] == pytest.approx(3 / 5)  # views: 2 of 3 for video 0, 1 of 2 for video 1
    assert m["video_top1"] == pytest.approx(1 / 2) and m["video_top5"] == 1.0
    assert (m["videos"], m["views"]) == (2, 5)
    conf = s.confusion()
    assert conf[2, 2] == 1 and conf[0, 3] == 1 and conf.sum() == 2


def test_no_scored_video_is_an_error_not_a_zero():
    with pytest.raises(RuntimeError, match="no video"):
        VideoScores(3).metrics()


def test_over_the_whole_split_a_video_that_did_not_decode_counts_as_wrong():
    s = VideoScores(num_classes=3, total_videos=4)  # 4 videos in the split, 2 decoded: one right, one wrong
    s.add(np.array([0, 1]), np.array([0, 1]), np.array([[0.8, 0.1, 0.1], [0.8, 0.1, 0.1]]))
    m = s.metrics()
    assert m["video_top1"] == pytest.approx(1 / 4) and m["video_top1_decoded"] == pytest.approx(1 / 2)
    assert (m["videos"], m["videos_total"], m["videos_not_decoded"]) == (2, 4, 2)
