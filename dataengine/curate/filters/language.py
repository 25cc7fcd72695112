"""The answer-language filter (offline language id, see checks/language.py), and the prose filters that only
make sense on chat answers."""

from __future__ import annotations

from datatrove.data import Document
from datatrove.pipeline.filters import GopherQualityFilter, GopherRepetitionFilter
from datatrove.pipeline.filters.base_filter import BaseFilter
from datatrove.pipeline.writers.disk_base import DiskWriter

from dataengine.checks.language import detect_language
from dataengine.checks.scripts import UNSPACED
from dataengine.rows import primary_language


class AnswerLanguageFilter(BaseFilter):
    """The answer must be in the language that was asked. Records `language_detected` and its
    confidence on every chat row it sees; code rows pass (code is not a natural language)."""

    name = "🌐 answer language"

    def __init__(self, min_confidence: float = 0.5, exclusion_writer: DiskWriter | None = None) -> None:
        super().__init__(exclusion_writer)
        self.min_confidence = min_confidence

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        if doc.metadata.get("kind") != "chat":
            return True
        code, prob = detect_language(doc.text)
        doc.metadata["language_detected"] = code
        doc.metadata["language_confidence"] = round(prob, 4)
        if code != primary_language(doc.metadata.get("language", "")):
            return False, "wrong_language"
        if prob < self.min_confidence:
            return False, "language_uncertain"
        return True


class _ChatOnly(BaseFilter):
    """Applies a datatrove filter, per language, to chat answers only: prose rules reject code
    (curly braces, symbols, short lines) and word rules do not fit unspaced scripts."""

    def __init__(self, make, skip_unspaced: bool, exclusion_writer: DiskWriter | None = None) -> None:
        super().__init__(exclusion_writer)
        self.make = make
        self.skip = UNSPACED if skip_unspaced else set()
        self.by_language: dict[str, BaseFilter | None] = {}

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        language = primary_language(doc.metadata.get("language", ""))
        if doc.metadata.get("kind") != "chat" or language in self.skip:
            return True
        if language not in self.by_language:
            try:
                self.by_language[language] = self.make(language)
            except ValueError:  # no word tokenizer for this language in datatrove
                self.by_language[language] = None
        inner = self.by_language[language]
        return True if inner is None else inner.filter(doc)


class RepetitionFilter(_ChatOnly):
    name = "🔁 repetition"

    def __init__(self, exclusion_writer: DiskWriter | None = None) -> None:
        # duplicate lines/paragraphs/n-grams; unspaced scripts are word-split by datatrove (jieba for Chinese)
        super().__init__(lambda language: GopherRepetitionFilter(language=language), False, exclusion_writer)


class ProseQualityFilter(_ChatOnly):
    name = "🥇 prose quality"

    def __init__(self, min_words: int, max_words: int, exclusion_writer: DiskWriter | None = None) -> None:
        def make(language: str) -> GopherQualityFilter:
            # Gopher's web-page defaults (50+ words, stop words, bullet and ellipsis ratios) misjudge chat answers;
            # keep the length window from the recipe and the rules that catch gibberish.
            return GopherQualityFilter(
                min_doc_words=min_words,
                max_doc_words=max_words,
                min_stop_words=None,
                max_bullet_lines_ratio=None,
                max_ellipsis_lines_ratio=None,
                language=language,
            )

        super().__init__(make, True, exclusion_writer)
