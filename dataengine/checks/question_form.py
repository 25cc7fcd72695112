"""The form a generated question is held to with vLLM's structured outputs (generate.chat.question_structured_output):
one line that ends with a question mark, short enough that the question's token cap holds it. A 135M teacher
asked for "one question" in French or Spanish often writes on past its cap (10 of 72 quickstart questions);
this regex makes it close the question instead (1 of 72)."""

from __future__ import annotations

# characters per token of question_max_tokens the regex allows before the question mark: under the cap for
# Latin or Cyrillic text (96 tokens: 144 characters; 3 of 16 Spanish questions of up to 200 characters still
# ran into it), and for Chinese or Japanese, where a character is one to three tokens of a small English-first
# tokenizer (96 tokens: 38 characters)
CHARS_PER_TOKEN = 1.5
CHARS_PER_TOKEN_CJK = 0.4
CJK = frozenset({"zh", "ja"})
# languages whose questions do not end in ? or ？ (Greek's is ";", Thai and Burmese use none): no regex
OWN_QUESTION_MARKS = frozenset({"el", "th", "lo", "km", "my", "bo", "am", "hy"})


def question_regex(language: str, max_tokens: int) -> str | None:
    """One line of 12 to `max_tokens` x CHARS_PER_TOKEN characters, then a question mark. In Chinese and Japanese
    3 to `max_tokens` x CHARS_PER_TOKEN_CJK characters and no Latin letters: a small teacher asked in Chinese
    for a Chinese question often writes an English one (3 of 8 in the quickstart), then answers it in English.
    None for languages that do not end a question with a question mark."""
    primary = language.split("-")[0]
    if primary in OWN_QUESTION_MARKS:
        return None
    if primary in CJK:
        return rf"[^\n?？A-Za-z]{{3,{max(3, int(max_tokens * CHARS_PER_TOKEN_CJK))}}}[?？]"
    return rf"[^\n?؟]{{12,{max(12, int(max_tokens * CHARS_PER_TOKEN))}}}[?؟]"
