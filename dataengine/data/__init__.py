"""Data shipped with the package that more than one part reads: the prompt seeds (languages, topics, code
archetypes), read by generation and by the builtin teacher's router calibration."""

from __future__ import annotations

from importlib import resources
from typing import Any

import yaml


def load(name: str) -> Any:
    """A shipped YAML file of this folder, parsed."""
    return yaml.safe_load(resources.files(__name__).joinpath(name).read_text("utf-8"))
