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
            # the conversation as it stood at turn k: the filters read its last turn as they read any row's (the
            # question filter, say, checks a follow-up but never for echoing the meta-prompt)
            turn = {**row, **_first_turns(row, answers, k + 1), **dict.fromkeys(_LAST_TURN_ONLY)}
            checked = Document(text=messages[at]["content"] or " ", id=doc.id, metadata=turn)
            for step, check in self.checks:
                verdict = check.filter(checked)
                if verdict is not True and not (isinstance(verdict, tuple) and verdict[0]):
                    reason = verdict[1] if isinstance(verdict, tuple) else step
                    return k, f"{step}: {reason}"
        return None


def _first_turns(row: dict, answers: list[int], n: int) -> dict:
    """The row's fields for its conversation up to its n-th assistant turn (`answers`: where each one is in the
    messages): the messages, the per-turn finish reasons, and the last kept turn's as the row's (null where
    generation recorded none: rows brought with ingest)."""
    finishes = (row.get("turn_finish_reasons") or [])[:n]
    questions = (row.get("turn_question_finish_reasons") or [])[:n]
    return {
        "messages": row["messages"][: answers[n - 1] + 1],
        "finish_reason": finishes[-1] if len(finishes) == n else None,
        "question_finish_reason": questions[-1] if len(questions) == n else None,
        "turn_finish_reasons": finishes or None,
        "turn_question_finish_reasons": questions or None,
    }


def _cut(doc: Document, failed: int, why: str) -> None:
    """The conversation up to its last good assistant turn (at least the first, which the filters then drop)."""
    row = doc.metadata
    answers = [i for i, m in enumerate(row["messages"]) if m["role"] == "assistant"]
    keep = max(failed, 1)
    row |= {
        **_first_turns(row, answers, keep),
        **dict.fromkeys(_LAST_TURN_ONLY),
        "cut_reason": why,
        "turns_cut": len(answers) - keep,
    }
    doc.text = row["messages"][-1]["content"] or " "
