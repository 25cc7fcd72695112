"""A planted corpus for dedup: distinct documents, exact copies and near-copies, with the truth.

Documents differ in words, not only in numbers (datatrove's normalisation maps digits together).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

SYLLABLES = ["ka", "lo", "mi", "ne", "ru", "ta", "shi", "po", "ve", "da", "zu", "fe", "gi", "bo", "ul", "an"]


@dataclass
class Planted:
    docs: list[tuple[str, str]]  # (id, text)
    duplicates: set[str]  # ids that a perfect dedup removes
    source_of: dict[str, str]  # duplicate id -> id of the document it copies


def _vocabulary(rng: random.Random, size: int) -> list[str]:
    words = set()
    while len(words) < size:
        words.add("".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 4))))
    return sorted(words)


def planted_corpus(distinct: int, exact: int, near: int, words: int = 120, edits: int = 1, seed: int = 0) -> Planted:
    rng = random.Random(seed)
    vocab = _vocabulary(rng, 5000)
    docs, duplicates, source_of = [], set(), {}
    originals = []
    for i in range(distinct):
        text = " ".join(rng.choice(vocab) for _ in range(words))
        docs.append((f"d{i}", text))
        originals.append((f"d{i}", text))
    for i in range(exact):
        src_id, text = rng.choice(originals)
        # same text up to case and whitespace: an exact duplicate after normalisation
        docs.append((f"e{i}", "  " + text.upper().replace(" ", "   ") + "\n"))
        duplicates.add(f"e{i}")
        source_of[f"e{i}"] = src_id
    for i in range(near):
        src_id, text = rng.choice(originals)
        tokens = text.split()
        for _ in range(edits):  # word-level substitutions
            tokens[rng.randrange(len(tokens))] = rng.choice(vocab)
        docs.append((f"n{i}", " ".join(tokens)))
        duplicates.add(f"n{i}")
        source_of[f"n{i}"] = src_id
    rng.shuffle(docs)
    # originals come first in the stream so that dedup keeps them rather than their copies
    docs.sort(key=lambda d: d[0][0] != "d")
    return Planted(docs, duplicates, source_of)


def groups(planted: Planted) -> list[set[str]]:
    """Each original with its copies: a perfect dedup keeps exactly one document of each group."""
    by_source: dict[str, set[str]] = {}
    for doc_id, _ in planted.docs:
        if doc_id not in planted.source_of:
            by_source.setdefault(doc_id, {doc_id})
    for dup, src in planted.source_of.items():
        by_source[src].add(dup)
    return list(by_source.values())


def removal_scores(removed: set[str], planted: Planted) -> dict[str, float]:
    """Precision / recall / F1 of a removed set, where keeping any one member of a group is right
    (which copy survives depends on processing order, e.g. across datatrove shards)."""
    tp = sum(min(len(removed & g), len(g) - 1) for g in groups(planted))
    should = sum(len(g) - 1 for g in groups(planted))
    precision = tp / len(removed) if removed else 1.0
    recall = tp / should if should else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}
