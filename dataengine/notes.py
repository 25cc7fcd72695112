"""What `validate` says beside "valid": how it read what could be read two ways (a cron line in words with its
next fire time, an endpoint given with the `/v1` the engine adds itself), what it could not check offline, and,
with `--online`, the checks that need the network (endpoints asked for their models, tokenizers and Hub
datasets fetched)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from dataengine.recipe import Recipe
from dataengine.recipe.schedule import describe
from dataengine.schedule.cron import next_time
from dataengine.teacher.server import served_name
from dataengine.train.student import vocab_problem, vocab_unchecked


def read_as(recipe: Recipe, raw: Any) -> list[str]:
    """How the recipe was read where a value means more than it shows."""
    lines = []
    if recipe.schedule is not None:
        cron, zone = recipe.schedule.cron, recipe.schedule.timezone
        due = next_time(cron, zone, datetime.now(UTC))
        lines.append(f"schedule.cron {cron!r}: {describe(cron)} ({zone}); next {due:%Y-%m-%d %H:%M %Z}")
    for where, url in _endpoints(raw):
        if url.rstrip("/").endswith("/v1"):
            root = url.rstrip("/").removesuffix("/v1")
            lines.append(f"{where}: {url!r} read as {root} (the engine adds /v1 to every request itself)")
    return lines


def _endpoints(raw: Any, where: str = "") -> list[tuple[str, str]]:
    """Every `endpoint`/`endpoints` string of the raw YAML, with its dotted path."""
    found = []
    if isinstance(raw, dict):
        for key, value in raw.items():
            path = f"{where}.{key}" if where else str(key)
            if key == "endpoint" and isinstance(value, str):
                found.append((path, value))
            elif key == "endpoints" and isinstance(value, list):
                found += [(f"{path}[{i}]", url) for i, url in enumerate(value) if isinstance(url, str)]
            else:
                found += _endpoints(value, path)
    return found


def unchecked(recipe: Recipe, base_dir: Path) -> list[str]:
    """What validate could not check without the network, each with what checks it."""
    lines = []
    for url in recipe.teacher.urls:
        lines.append(f"teacher endpoint {url}: not asked whether it is up and serves {served_name(recipe.teacher)!r}")
    judge = recipe.curate.judge if recipe.curate is not None else None
    if judge is not None and judge.endpoint:
        lines.append(f"curate.judge.endpoint {judge.endpoint}: not asked whether it serves {judge.model!r}")
    for where, source in _hub_sources(recipe):
        lines.append(f"{where}: Hub dataset {source.dataset!r}: its columns were not read")
    if why := vocab_unchecked(recipe, base_dir):
        lines.append(why)
    return lines


def online_problems(recipe: Recipe, base_dir: Path) -> list[str]:
    """The checks `unchecked` lists, made: endpoints' /v1/models, Hub datasets' columns, tokenizers fetched."""
    problems = []
    for url in recipe.teacher.urls:
        problems += _serves(f"teacher.endpoint {url}", url, served_name(recipe.teacher))
    judge = recipe.curate.judge if recipe.curate is not None else None
    if judge is not None and judge.endpoint and judge.model:
        problems += _serves(f"curate.judge.endpoint {judge.endpoint}", judge.endpoint, judge.model)
    for where, source in _hub_sources(recipe):
        problems += _dataset_columns(where, source)
    if problem := vocab_problem(recipe, base_dir, local_only=False):
        problems.append(problem)
    return problems


def _hub_sources(recipe: Recipe) -> list[tuple[str, Any]]:
    """The Hub datasets a run reads: prompt sources and sources of rows to ingest, with their paths."""
    sources = [(f"generate.sources[{i}]", s) for i, s in enumerate(recipe.generate.sources if recipe.generate else [])]
    sources += [(f"ingest.sources[{i}]", s) for i, s in enumerate(recipe.ingest.sources if recipe.ingest else [])]
    return [(where, source) for where, source in sources if source.dataset is not None]


def _serves(where: str, url: str, model: str) -> list[str]:
    import httpx

    try:
        response = httpx.get(f"{url}/v1/models", timeout=10.0)
        response.raise_for_status()
        served = [entry.get("id") for entry in response.json().get("data", [])]
    except (httpx.HTTPError, ValueError, AttributeError) as exc:
        return [f"{where}: /v1/models did not answer: {exc}"]
    if model not in served:
        return [
            f"{where}: serves {', '.join(map(str, served)) or 'no model'}, not {model!r} (teacher.served_model_name)"
        ]
    return []


def _dataset_columns(where: str, source: Any) -> list[str]:
    from datasets import load_dataset_builder

    dataset = source.dataset
    try:
        features = load_dataset_builder(dataset).info.features
    except Exception as exc:  # the Hub's and datasets' errors have no common base
        return [f"{where}.dataset: {dataset!r} cannot be read from the Hub: {type(exc).__name__}: {exc}"]
    if features is None:
        return []  # the builder does not say its columns before it downloads: the run reads them
    wanted = [getattr(source, name, None) for name in ("field", "messages_field", "prompt_field", "answer_field")]
    if getattr(source, "prompt_field", None) is not None:
        wanted.remove(source.messages_field)  # prompt and answer columns instead of messages
    missing = [c for c in (*wanted, source.language_field) if c is not None and c not in features]
    return [f"{where}: no column {c!r} in {dataset!r} (columns: {', '.join(features)})" for c in missing]
