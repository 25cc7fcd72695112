"""Languages whose scripts put no spaces between words (BCP-47 primary subtags).

Word-count rules (Gopher) do not apply to them, and word tokenizers must segment them (jieba, ...).
"""

UNSPACED = frozenset({"zh", "ja", "th", "lo", "km", "my", "bo"})
