"""`curate.executor: ray` runs the same datatrove steps on datatrove's RayPipelineExecutor (local Ray)."""

from __future__ import annotations

import pytest

from dataengine.curate.dedup import dedup_language
from dataengine.executors import pipeline_runner
from dataengine.recipe import DedupConfig, ExecutorSettings
from tests.planted_corpus import groups, planted_corpus
from tests.test_dedup import write_docs

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_dedup_on_ray_matches_the_planted_truth(tmp_path, local_ray):
    from datatrove.pipeline.readers import JsonlReader

    planted = planted_corpus(distinct=60, exact=12, near=12, edits=1, seed=5)
    write_docs(tmp_path / "in", planted.docs, shards=2)
    run = pipeline_runner(ExecutorSettings(executor="ray", workers=2), tmp_path / "logs")
    dedup_language(
        "en", tmp_path / "in", tmp_path / "work", tmp_path / "rejected", tmp_path / "out", DedupConfig(), run
    )
    kept = {d.id for d in JsonlReader(str(tmp_path / "out")).run()}
    assert len(kept) == 60
    assert all(len(group & kept) == 1 for group in groups(planted))
    # datatrove's completion markers are written by the Ray executor too: a rerun skips every task
    assert (tmp_path / "logs" / "minhash-sigs-en" / "completions").is_dir()
