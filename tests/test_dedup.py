"""Exact + MinHash dedup (datatrove blocks) on a planted corpus."""

from __future__ import annotations

from pathlib import Path

import orjson
from datatrove.pipeline.readers import JsonlReader

from dataengine.curate.dedup import dedup_language
from dataengine.executors import pipeline_runner
from dataengine.recipe import DedupConfig, ExecutorSettings
from tests.planted_corpus import groups, planted_corpus, removal_scores


def write_docs(folder: Path, docs: list[tuple[str, str]], language: str = "en", shards: int = 1) -> None:
    """Documents as the filter step writes them: one jsonl file per datatrove task."""
    folder.mkdir(parents=True)
    for shard in range(shards):
        with open(folder / f"{shard:05d}.jsonl", "wb") as fh:
            for doc_id, text in docs[shard::shards]:
                fh.write(orjson.dumps({"text": text, "id": doc_id, "metadata": {"language": language}}) + b"\n")


def run_dedup(tmp_path: Path, docs, cfg: DedupConfig, shards: int = 1, workers: int = 1):
    write_docs(tmp_path / "in", docs, shards=shards)
    run = pipeline_runner(ExecutorSettings(workers=workers), tmp_path / "logs")
    dedup_language("en", tmp_path / "in", tmp_path / "work", tmp_path / "rejected", tmp_path / "out", cfg, run)
    kept = {d.id: d for d in JsonlReader(str(tmp_path / "out")).run()}
    rejected = {}
    for path in (tmp_path / "rejected").glob("*.jsonl"):
        for line in path.read_bytes().splitlines():
            rejected[orjson.loads(line)["id"]] = path.name.split("_")[0]
    return kept, rejected


def test_planted_corpus_exact_and_near_copies(tmp_path):
    planted = planted_corpus(distinct=60, exact=12, near=12, edits=1)
    kept, rejected = run_dedup(tmp_path, planted.docs, DedupConfig())
    assert len(kept) + len(rejected) == len(planted.docs)  # nothing lost
    assert set(rejected) == planted.duplicates  # every copy removed, nothing else
    assert {i for i in rejected if i.startswith("e")} == {i for i, step in rejected.items() if step == "exact"}
    assert {i for i in rejected if i.startswith("n")} == {i for i, step in rejected.items() if step == "near"}
    assert all(i.startswith("d") for i in kept)


def test_sharded_input_in_parallel_finds_copies_across_shards(tmp_path):
    """Three shards, two workers: copies in other shards are found; one document of each group is kept
    (which one depends on the shard order, so it may be a copy rather than the original)."""
    planted = planted_corpus(distinct=60, exact=12, near=12, edits=1, seed=5)
    kept, rejected = run_dedup(tmp_path, planted.docs, DedupConfig(), shards=3, workers=2)
    assert len(kept) + len(rejected) == len(planted.docs)
    for group in groups(planted):
        assert len(group & set(kept)) == 1, group
    assert removal_scores(set(rejected), planted)["f1"] == 1.0


def test_cluster_ids_are_consistent(tmp_path):
    planted = planted_corpus(distinct=30, exact=0, near=8, edits=1, seed=3)
    kept, _ = run_dedup(tmp_path, planted.docs, DedupConfig())
    copies_of = {}
    for dup, src in planted.source_of.items():
        copies_of.setdefault(src, []).append(dup)
    for doc_id, doc in kept.items():
        expected = 1 + len(copies_of.get(doc_id, []))
        assert doc.metadata["minhash_cluster_size"] == expected
        assert (doc.metadata["minhash_cluster_id"] != -1) == (expected > 1)
    ids = [kept[src].metadata["minhash_cluster_id"] for src in copies_of]
    assert len(set(ids)) == len(ids)  # one cluster per original


def test_distinct_documents_all_kept_and_exact_only(tmp_path):
    planted = planted_corpus(distinct=40, exact=5, near=5, edits=1, seed=7)
    cfg = DedupConfig(minhash={"enabled": False})
    kept, rejected = run_dedup(tmp_path, planted.docs, cfg)
    assert set(rejected) == {i for i in planted.duplicates if i.startswith("e")}
    assert len(kept) == 45  # near-copies survive without MinHash


def test_dedup_against_a_reference_folder(tmp_path):
    """A second run adds only new content: rows copying earlier data (exactly or nearly) are removed."""
    from datasets import Dataset

    planted = planted_corpus(distinct=40, exact=0, near=0, seed=11)
    earlier, fresh = planted.docs[:20], planted.docs[20:]
    reference = tmp_path / "published" / "data"
    reference.mkdir(parents=True)
    rows = [
        {"id": i, "language": "en", "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": t}]}
        for i, t in earlier
    ]
    Dataset.from_list(rows).to_parquet(str(reference / "train-00000-of-00001.parquet"))
    (tmp_path / "published" / "manifest.json").write_text("{}")  # other files in the folder are ignored

    exact_copy = ("again-exact", "q\n\n" + earlier[0][1].upper())
    near_copy = ("again-near", "q\n\n" + earlier[1][1].replace(earlier[1][1].split()[5], "zzzword", 1))
    new = [(i, "q\n\n" + t) for i, t in fresh] + [exact_copy, near_copy]
    write_docs(tmp_path / "in", new)
    run = pipeline_runner(ExecutorSettings(), tmp_path / "logs")
    dedup_language(
        "en",
        tmp_path / "in",
        tmp_path / "work",
        tmp_path / "rejected",
        tmp_path / "out",
        DedupConfig(),
        run,
        references=[tmp_path / "published"],
    )
    kept = {d.id for d in JsonlReader(str(tmp_path / "out")).run()}
    assert kept == {i for i, _ in fresh}
