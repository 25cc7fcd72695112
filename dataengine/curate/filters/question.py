"""Filters on the question the teacher wrote (chat rows of task `instruct_answer`) and on answers that ask
back instead of answering: the checks of checks/questions.py, on the rows.

A document here is one sample row: `text` is the assistant's answer and `metadata` the whole row.
"""

from __future__ import annotations

from datatrove.data import Document
from datatrove.pipeline.filters.base_filter import BaseFilter
from datatrove.pipeline.writers.disk_base import DiskWriter

from dataengine.checks.questions import asks_back, echo_share, question_problem
from dataengine.rows import last_user_turn, primary_language


class QuestionFilter(BaseFilter):
    """A generated question that is empty of content, cut off by question_max_tokens, addresses the user
    (offers help, asks for a question) or echoes the meta-prompt; an answer that only asks back. Questions
    from a prompt file are the user's own and pass; the ask-back check reads every chat answer."""

    name = "❓ question"

    def __init__(self, max_echo: float, exclusion_writer: DiskWriter | None = None) -> None:
        super().__init__(exclusion_writer)
        self.max_echo = max_echo

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        row = doc.metadata
        if row.get("kind") != "chat":
            return True
        language = primary_language(row.get("language") or "")
        if row.get("task") == "instruct_answer":
            question = last_user_turn(row.get("messages") or [])
            if problem := question_problem(question, row.get("question_finish_reason"), language):
                return False, problem
            own = (row.get("topic") or "", row.get("persona") or "")
            # the meta-prompt wrote a conversation's first question only: a follow-up cannot echo it
            follow_up = len(row.get("turn_question_finish_reasons") or []) > 1
            echo = 0.0 if follow_up else echo_share(question, row.get("instruction") or "", language, own)
            if echo > self.max_echo:
                return False, "question_echoes_prompt"
        if asks_back(doc.text, language):
            return False, "answer_asks_back"
        return True
