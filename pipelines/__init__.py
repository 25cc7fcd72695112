"""Named pipelines. Each module has `build(recipe) -> list[Stage]`; recipes pick one with `pipeline:`."""

from __future__ import annotations

import pkgutil


def available_pipelines() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))
