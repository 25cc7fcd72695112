"""Files and folders that are whole or absent: a crash never leaves half of one for a reader to trust."""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path


def write_atomic(path: Path, text: str) -> None:
    """Write a whole file or leave the old one (written aside, then renamed over it)."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def replace_folder(staging: Path, final: Path) -> Path:
    """Put a fully written folder in place of `final` (which a crash before this leaves untouched)."""
    shutil.rmtree(final, ignore_errors=True)
    staging.rename(final)
    return final
