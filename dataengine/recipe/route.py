"""The `route` block: how the teacher routes the curated rows through its experts."""

from __future__ import annotations

from pydantic import Field

from dataengine.recipe.base import LanguageCode, StrictModel


class RouteConfig(StrictModel):
    """Expert routing of the curated rows: prompt + answer replayed through the teacher in transformers,
    recording at every MoE layer which experts each answer token went to. Writes routing/map.json (load per
    layer x expert, balance, co-activation, consistency, divergence between languages); `dataengine experts
    RUN_DIR` shows it. Curate and distill pipelines run it after curation."""

    batch_size: int = Field(8, ge=1, description="rows per forward pass, grouped by length; the resumable unit")
    rejected: bool = Field(True, description="also route the rows curation rejected (the kept vs rejected slice)")
    cold_below: float = Field(
        0.25, gt=0, lt=1, description="an expert whose load is below this share of uniform is cold"
    )
    reference_language: LanguageCode = Field(
        "en", description="each language's routing divergence is measured from this one"
    )
