"""Every assistant turn of a conversation checked (generate.chat.turns, or conversations brought with `ingest`).

The filters read a row's last assistant turn. Before they do, this step reads each earlier turn as a row of its
own (the conversation up to that turn, that turn's finish reasons) through the same filters, and cuts the
conversation at the last turn before the first that fails: the row keeps its good turns, its last turn is then
checked as any row's, and the reason stays in `cut_reason` ("step: reason") with `turns_cut`. A first turn
that fails leaves the conversation at that turn, which the filters then drop with the same reason.
"""

from __future__ import annotations

from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.filters.base_filter import BaseFilter

# what belongs to the last turn only: a cut conversation no longer has it
_LAST_TURN_ONLY = ("reasoning", "reasoning_tokens", "reasoning_closed", "teacher_routing")


class EveryTurn(PipelineStep):
    name = "🗣️ every turn"
    type = "🔻 - FILTER"

    def __init__(self, checks: list[tuple[str, BaseFilter]]) -> None:
        super().__init__()
        self.checks = checks

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        for doc in data:
            with self.track_time():
                if (cut := self._first_failure(doc)) is not None:
                    self.stat_update("cut_conversations")
                    _cut(doc, *cut)
            yield doc

    def _first_failure(self, doc: Document) -> tuple[int, str] | None:
        """(the 0-based assistant turn that first fails, "step: reason"), or None when every earlier one passes."""
        row = doc.metadata
        messages = row.get("messages") or []
        answers = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
        for k, at in enumerate(answers[:-1]):
            turn = {**row, **_turn_fields(row, k), "messages": messages[: at + 1]}
            turn.update(dict.fromkeys(_LAST_TURN_ONLY))
            if k:  # the meta-prompt wrote the first question only: a follow-up cannot echo it
                turn["instruction"] = ""
            checked = Document(text=messages[at]["content"] or " ", id=doc.id, metadata=turn)
            for step, check in self.checks:
                verdict = check.filter(checked)
                if verdict is not True and not (isinstance(verdict, tuple) and verdict[0]):
                    reason = verdict[1] if isinstance(verdict, tuple) else step
                    return k, f"{step}: {reason}"
        return None


def _turn_fields(row: dict, k: int) -> dict:
    """Turn k's finish reasons, where generation recorded them (null for rows brought with ingest)."""
    finishes = row.get("turn_finish_reasons") or []
    questions = row.get("turn_question_finish_reasons") or []
    return {
        "finish_reason": finishes[k] if k < len(finishes) else None,
        "question_finish_reason": questions[k] if k < len(questions) else None,
    }


def _cut(doc: Document, failed: int, why: str) -> None:
    """The conversation up to its last good assistant turn (at least the first, which the filters then drop)."""
    row = doc.metadata
    messages = row["messages"]
    answers = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    keep = max(failed, 1)
    row |= {
        "messages": messages[: answers[keep - 1] + 1],
        **_turn_fields(row, keep - 1),
        "turn_finish_reasons": (row.get("turn_finish_reasons") or [])[:keep] or None,
        "turn_question_finish_reasons": (row.get("turn_question_finish_reasons") or [])[:keep] or None,
        "cut_reason": why,
        "turns_cut": len(answers) - keep,
    }
    row.update(dict.fromkeys(_LAST_TURN_ONLY))
    doc.text = messages[answers[keep - 1]]["content"] or " "
