"""The student after DPO against itself before DPO, as the run's judge sees them: both answer each held-out
prompt, the judge scores each answer under the rubric, and the student wins a prompt where its answer
scores higher (a tie counts half)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dataengine.recipe import Recipe
from dataengine.stage import RunContext
from dataengine.teacher.inference import run_inference
from dataengine.verdicts import ask_verdict, judge_config, judge_endpoint, mean_score, read_verdicts, verdict_document


def win_rate(
    recipe: Recipe,
    before_dpo: Path,
    held_out: list[dict],
    after: dict[str, str],
    prefix: str,
    work_dir: Path,
    ctx: RunContext,
) -> dict[str, Any]:
    """The student's win rate over the held-out rows: `after` holds its answers by row id (as samples.jsonl
    keeps them, cut at SAMPLE_CHARS); the student before DPO (the folder `before_dpo`) answers the same prompts
    here, greedily, as the evaluation asked it, cut alike so the judge weighs answers of equal footing."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from dataengine.train.evaluation import SAMPLE_CHARS, generate_answers

    tokenizer = AutoTokenizer.from_pretrained(str(before_dpo))
    model = AutoModelForCausalLM.from_pretrained(str(before_dpo), dtype=torch.float32).eval()
    max_new = recipe.train.evaluate.max_new_tokens
    ctx.log(f"the student before DPO answers the {len(held_out)} held-out prompts")
    prompts = [(row["messages"][:-1], prefix if row["kind"] == "code" else "") for row in held_out]
    said = generate_answers(model, tokenizer, prompts, max_new)
    before = {row["id"]: answer[:SAMPLE_CHARS] for row, answer in zip(held_out, said, strict=True)}
    cfg = recipe.curate.judge
    docs = [
        verdict_document(
            {**row, "messages": [*row["messages"][:-1], {"role": "assistant", "content": answers[row["id"]]}]},
            cfg,
            doc_id=f"{row['id']}/{side}",
        )
        for row in held_out
        for side, answers in (("after", after), ("before", before))
    ]
    judge, model_name = judge_endpoint(recipe, ctx.teacher, work_dir / "judge.log", ctx.log)
    run_inference(
        [judge],
        sorted(docs, key=lambda doc: doc.id),  # an inference pass takes its documents in id order
        work_dir / "verdicts",
        ask_verdict,
        lambda url: judge_config(cfg, model_name, url),
        ctx.console,
        "judging the student against itself before DPO",
    )
    verdicts = read_verdicts(work_dir / "verdicts" / "raw")
    outcome = {"wins": 0, "ties": 0, "losses": 0, "unjudged": 0}
    for row in held_out:
        mine, theirs = (mean_score(verdicts.get(f"{row['id']}/{side}", {})) for side in ("after", "before"))
        if mine is None or theirs is None:
            outcome["unjudged"] += 1  # a verdict that never read: the prompt is left out
        else:
            outcome["wins" if mine > theirs else "losses" if mine < theirs else "ties"] += 1
    judged = outcome["wins"] + outcome["ties"] + outcome["losses"]
    rate = (outcome["wins"] + outcome["ties"] / 2) / judged if judged else None
    return {"rate": rate, **outcome, "judge_model": model_name, "against": "the student before DPO"}
