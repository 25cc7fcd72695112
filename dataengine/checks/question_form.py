"""The form a generated question is held to with vLLM's structured outputs (generate.chat.question_structured_output):
one line that ends with a question mark. A 135M teacher asked for "one question" in French or Spanish often
writes on past its token cap; this regex makes it close the question instead, within a length its cap holds."""

from __future__ import annotations

from dataengine.checks.scripts import UNSPACED

# characters at most before the question mark: under the default 96-token cap for Latin or Cyrillic text (3
# of 16 Spanish questions of up to 200 characters still ran into it), and for Chinese or Japanese, where a
# character is one to three tokens of a small English-first tokenizer
MAX_CHARS = 150
MAX_CHARS_UNSPACED = 40


def question_regex(language: str) -> str:
    """One line, 12 to MAX_CHARS characters, then a question mark. In unspaced scripts 3 to MAX_CHARS_UNSPACED
    characters and no Latin letters: a small teacher asked in Chinese for a Chinese question often writes an
    English one (3 of 8 in the quickstart), and then answers it in English."""
    if language.split("-")[0] in UNSPACED:
        return rf"[^\n?？A-Za-z]{{3,{MAX_CHARS_UNSPACED}}}[?？]"
    return rf"[^\n?؟]{{12,{MAX_CHARS}}}[?؟]"
