"""What every block of the recipe is made of: `StrictModel` (unknown keys are errors), the markers of the
fields no stage's cache key holds (`WHERE`, `WAIT`, `PACE`, `LOGGING`, `stage_block`), and the value types
several blocks share (a language code, a folder name, an endpoint's URL, the builtin teachers' prefix).
"""

from __future__ import annotations

import re
from typing import Annotated, ClassVar

from pydantic import AfterValidator, BaseModel, ConfigDict

BUILTIN_PREFIX = "builtin:"


def _bcp47(value: str) -> str:
    if not re.fullmatch(r"[a-z]{2,3}(-[A-Za-z0-9]{2,8})*", value):
        raise ValueError(f"{value!r} is not a BCP-47 language code (e.g. en, fr, pt-BR, zh-Hans)")
    return value


LanguageCode = Annotated[str, AfterValidator(_bcp47)]


def _folder_name(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}", value):
        raise ValueError(f"name {value!r} must be letters, digits, '.', '_' or '-' (it names a folder)")
    return value


FolderName = Annotated[str, AfterValidator(_folder_name)]


# Markers on fields that no stage's cache key holds (stage.recipe_key). A field that cannot change a row or a
# weight (where the work runs, on how many processes, how long to wait for a server, how to restart one) is
# output-neutral: changing it on a finished run reruns nothing. A knob of speed that can change a row (a
# request's timeout: a request that keeps timing out loses its row) is not. A sub-block that is another
# stage's own block (curate.judge) is left out of the enclosing block's key and makes that stage's key instead.
WHERE = {"output_neutral": "where or on how many processes the work runs"}
WAIT = {"output_neutral": "how long to wait for a server or how to restart one"}
PACE = {"output_neutral": "how much work is in flight at once"}
LOGGING = {"output_neutral": "what is logged"}
# A knob added to a block whose key is already part of row ids (generate's): at its default it changes nothing,
# so it joins the key only when a recipe sets it, and every earlier key (and row id) stays what it was.
ADDED = {"keyed_when_set": True}


def stage_block(stage: str) -> dict[str, str]:
    return {"stage": stage}


class StrictModel(BaseModel):
    """Unknown keys are errors: a typo in a recipe must never be silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    # keys an earlier version took, and the name that replaced them (the error names the new one)
    renamed: ClassVar[dict[str, str]] = {}
    # what an unset (null) knob means, for the reference: the library the block feeds decides
    unset_default: ClassVar[str | None] = None


# A stage of your own declares its recipe block as one of these (dataengine.StageConfig): unknown keys are errors
StageConfig = StrictModel


def http_url(value: str | None) -> str | None:
    """An endpoint's URL, without a trailing slash or `/v1` (the engine adds `/v1` to every request, and the
    OpenAI convention every vLLM user copies ends in it); refused unless http(s)."""
    if value is not None and not re.match(r"^https?://[^/\s]+", value):
        raise ValueError(f"endpoint must be an http(s) URL like http://127.0.0.1:8000, got {value!r}")
    return value.rstrip("/").removesuffix("/v1") if value else value
