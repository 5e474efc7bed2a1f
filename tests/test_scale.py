"""A Kinetics-sized manifest trains: 250,000 rows whose URIs cycle over the tiny set's real videos (the
manifest is cheap, the videos are few), on the default preset's data settings (a pool of 1 decoder, the
rows repeated 4 times: 1,000,000 rows an epoch) and on a fixed pool of 2 decoders. Before, a read task
over 1 MiB crashed Ray's planner before the first batch (``'functools.partial' object has no attribute
'__name__'``), from ~6,500 videos with a pool of 1."""
from __future__ import annotations

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from nlray.config import load_config
from nlray.data.manifest import read_manifest, write_manifest
from nlray.data.pipeline import split_frame
from nlray.train.trainer import fit
from tiny import TINY

ROWS = 250_000


@pytest.fixture(scope="module")
def big_manifest(ray_local, s3_data, tmp_path_factory):
    """s3 URI of a 250,000-row training manifest over the tiny set's training videos."""
    from nlray.data.dataset import build_manifest

    df, labels, _ = build_manifest(s3_data)
    train = split_frame(df, "train")
    big = train.iloc[np.arange(ROWS) % len(train)].reset_index(drop=True)
    big["video_id"] = [f"{v}_{i}" for i, v in enumerate(big["video_id"])]  # distinct rows, as in Kinetics
    uri = "s3://train-data/big/manifest.parquet"
    write_manifest(big, labels, uri)
    assert len(read_manifest(uri)[0]) == ROWS
    return uri


@pytest.mark.parametrize("pool", [[], ["data.decode_actors=2", "data.decode_actors_max=0"]],
                         ids=["default-preset", "fixed-pool-of-2"])
def test_a_quarter_million_row_manifest_trains(big_manifest, mlflow_server, tmp_path, pool):
    defaults = load_config("demo")
    cfg = load_config("demo", [*TINY, f"data.repeat={defaults.data.repeat}", *pool, f"data.root={big_manifest}",
                               f"data.cache_dir={tmp_path / 'cache'}", f"tracking.uri={mlflow_server}",
                               "tracking.experiment=t-scale", f"train.storage_path={tmp_path / 'results'}",
                               f"name=scale-{len(pool)}", "train.steps=4", "train.log_every=2",
                               "train.checkpoint_every=4"])
    assert cfg.data.decode_actors == (2 if pool else defaults.data.decode_actors)
    res = fit(cfg)
    client = MlflowClient(mlflow_server)
    run = client.get_run(res["run_id"])
    assert run.info.status == "FINISHED"
    loss = sorted((m.step, m.value) for m in client.get_metric_history(res["run_id"], "train/loss"))
    assert [s for s, _ in loss] == [2, 4] and all(np.isfinite(v) for _, v in loss)
    assert run.data.metrics["data/bad_videos_total"] == 0
