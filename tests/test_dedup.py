"""Exact + MinHash dedup (datatrove blocks) on a planted corpus."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import orjson
import xxhash
from datatrove.data import Document
from datatrove.pipeline.dedup import MinhashConfig, MinhashDedupSignature
from datatrove.pipeline.readers import JsonlReader
from datatrove.utils.text import simplify_text

from dataengine.curate.dedup import MinhashSignature, dedup_language, mod_mersenne61, normalised_text, word_tokenizer
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


# Texts for the normalisation proofs: accents, scripts with marks and their own digits and punctuation,
# NFD's surprises (Hangul to jamo, dotted İ, Ångström and Kelvin signs, ligatures it keeps), mixed whitespace,
# and characters with spacing marks NFD reorders (Javanese pangkon then cecak telu, musical notes).
MULTILINGUAL = [
    "Café crème brûlée — naïve façade, 3,14 € à 10h30!",
    "¿Qué pasó? ¡Mañana! Grüße aus Köln, Straße 7; Ça coûte 12.50 €…",
    "Tiếng Việt có dấu: người, được, những. Ελληνικά: άλφα, βήτα; ΐ ΰ. Ёлка и йогурт: Привет, мир!",
    "中文文本，包含标点。还有数字１２３和全角字符！日本語のテキスト：ガギグゲゴ、パピプペポ。",
    "한국어 텍스트입니다. 가나다라! ㄱㄴ 각",
    "العربية: مَرْحَبًا بِكُمْ، ١٢٣٫٤٥ ؟ فارسی ۱۲۳ — שָׁלוֹם עוֹלָם",
    "हिन्दी में पाठ। संख्या १२३, क़ ज़ फ़ ॥ ภาษาไทย ๑๒๓ สวัสดีครับ ௧௨௩ ໑໒",
    "İstanbul ﬁ ﬂ Å Ω K ǅ ẛ̣ e\u0301 o\u0308 a\u030a\u0323 q\u0307\u0323 \u0301leading mark",
    "emoji 👍🏽 ❤️ 🇫🇷 👨‍👩‍👧 ©®™ ± ½ ² x²",
    "tab\tnew\nline\r\n  nbsp\u00a0em\u2003ideo\u3000sep\u2028\u2029 vt\x0bff\x0c\x1c\x1d\x1e\x1f\x85 end ",
    "ꦗꦮ\ua9c0\ua9b3ꦗꦮ 𝅗𝅥 𝅘𝅥𝅮 ᭄ ᮪",
    "",
    "   ",
    "!!! ... ---",
    "\u0301",
    "3.14 1,000,000 ١٫٥ 2024-11-25 v1.2.3",
    "".join(c for c in map(chr, range(0x110000)) if c.isspace()).join(["every", "space"]),
]


def _code_point_chunks(size: int = 512) -> list[str]:
    """Every BMP code point and a few astral blocks (musical symbols, Brahmic scripts with spacing viramas,
    emoji, CJK extension B), each between two letters so that NFD cannot reorder across them."""
    points = [*range(0xD800), *range(0xE000, 0x10000), *range(0x11100, 0x11380), *range(0x1D100, 0x1D200)]
    points += [*range(0x1F300, 0x1F700), *range(0x20000, 0x20100)]
    return [" a ".join(map(chr, points[i : i + size])) for i in range(0, len(points), size)]


def _signature_step(tmp_path: Path) -> MinhashSignature:
    return MinhashSignature(str(tmp_path / "sigs"), MinhashConfig(), language=word_tokenizer("en"))


def test_simplify_is_datatrove_simplify_text(tmp_path):
    """MinhashSignature.simplify is datatrove's simplify_text, string for string, on the bench's planted
    corpus, on a multilingual sample, and on every BMP code point and the astral blocks above."""
    step = _signature_step(tmp_path)
    planted = planted_corpus(distinct=300, exact=50, near=50, edits=2)
    texts = [text for _, text in planted.docs] + MULTILINGUAL + _code_point_chunks()
    for text in texts:
        assert step.simplify(text) == simplify_text(text, step.config.norm_config), text[:80]


def test_signatures_are_datatrove_signatures(tmp_path):
    """Shingles and band signatures as datatrove's own methods compute them, with its hash given bytes."""
    ours = _signature_step(tmp_path)
    theirs = MinhashDedupSignature(str(tmp_path / "theirs"), MinhashConfig(), language=word_tokenizer("en"))
    theirs._hash_func = lambda shingle: xxhash.xxh64_intdigest(shingle.encode())
    planted = planted_corpus(distinct=300, exact=50, near=50, edits=2)
    for text in [text for _, text in planted.docs] + MULTILINGUAL:
        shingles = ours.get_shingles(text)
        assert np.array_equal(shingles, theirs.get_shingles(text)), text[:80]
        if shingles.size:
            assert ours.get_signature(shingles) == theirs.get_signature(shingles), text[:80]


def test_mod_mersenne61_is_numpy_modulo():
    p = (1 << 61) - 1
    # around every multiple of p that fits, and the top of the range
    edges = [0, 1, *(k * p + j for k in range(1, 9) for j in (-1, 0, 1)), *((1 << 64) - 1 - k for k in range(16))]
    rng = np.random.default_rng(0)
    for x in (np.array(edges, dtype=np.uint64), rng.integers(0, 1 << 64, size=100_000, dtype=np.uint64)):
        assert np.array_equal(mod_mersenne61(x.copy()), x % np.uint64(p))


def test_exact_dedup_key_is_unchanged():
    """normalised_text collapses whitespace with split: the same key as with re.sub(r"\\s+", " ", ...)."""
    planted = planted_corpus(distinct=100, exact=50, near=0)
    for text in [text for _, text in planted.docs] + MULTILINGUAL + _code_point_chunks(4096):
        expected = re.sub(r"\s+", " ", text.lower()).strip().encode()
        assert normalised_text(Document(text=text, id="x")) == expected, text[:80]
