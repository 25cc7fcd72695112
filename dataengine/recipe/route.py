"""The `route` block: how the teacher routes the curated rows through its experts."""

from __future__ import annotations

from pydantic import Field, field_validator

from dataengine.recipe.base import ADDED, LanguageCode, StrictModel


class RouteConfig(StrictModel):
    """Expert routing of the curated rows: prompt + answer replayed through the teacher in transformers,
    recording at every MoE layer which experts each answer token went to. Writes routing/map.json (load per
    layer x expert, balance, co-activation, consistency, divergence between languages, the token slots an
    expert capacity factor would drop and the copies an EPLB-style balancer would add); `dataengine experts
    RUN_DIR` shows it. Curate and distill pipelines run it after curation."""

    batch_size: int = Field(8, ge=1, description="rows per forward pass, grouped by length; the resumable unit")
    rejected: bool = Field(True, description="also route the rows curation rejected (the kept vs rejected slice)")
    cold_below: float = Field(
        0.25, gt=0, lt=1, description="an expert whose load is below this share of uniform is cold"
    )
    reference_language: LanguageCode = Field(
        "en", description="each language's routing divergence is measured from this one"
    )
    capacity_factors: list[float] = Field(
        [1.0, 1.25, 2.0],
        min_length=1,
        description="expert capacity factors (Switch/GShard: an expert takes at most factor x tokens x top_k / "
        "experts slots of a batch) at which the map gives the share of token slots each layer would drop",
        json_schema_extra=ADDED,
    )
    capacity_batch_tokens: int = Field(
        4096,
        ge=1,
        description="answer tokens per batch for the capacity figures (kept rows in id order, whole rows)",
        json_schema_extra=ADDED,
    )

    @field_validator("capacity_factors")
    @classmethod
    def _positive(cls, factors: list[float]) -> list[float]:
        if any(f <= 0 for f in factors):
            raise ValueError(f"every capacity factor must be above 0, got {factors}")
        return factors
