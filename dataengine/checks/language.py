"""Language identification that runs offline.

datatrove's `LanguageFilter` downloads a fastText model at run time, which fails offline;
py3langid ships its model inside the wheel.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from functools import cache

_BCP47 = re.compile(r"[a-z]{2,3}(-[a-z0-9]{2,8})*")


@cache
def _identifier():
    from py3langid.langid import MODEL_DIR, MODEL_FILE, LanguageIdentifier

    # the model shipped in the wheel, with probabilities normalised to [0, 1] (the default gives log-scores)
    return LanguageIdentifier.from_modelpath(MODEL_DIR / MODEL_FILE, norm_probs=True)


def known_languages() -> set[str]:
    """The ISO 639-1 codes the identifier tells apart: a row asked in another language cannot pass the check."""
    return set(_identifier().nb_classes)


def language_column_problem(where: str, values: Iterable[object], file: str) -> str | None:
    """Of a language column's `values` (a sample of `file`), those the answer-language check cannot match (not
    a BCP-47 code, in any case, or a language the identifier does not know): every row in them would be
    dropped. None when it can match them all."""
    known = known_languages()
    counts = Counter(str(value) for value in values)
    unmatched = {
        value: n
        for value, n in counts.items()
        if not _BCP47.fullmatch(value.lower()) or value.lower().split("-")[0] not in known
    }
    if not unmatched:
        return None
    shown = ", ".join(f"{v!r} ({n} rows)" for v, n in sorted(unmatched.items(), key=lambda kv: -kv[1])[:5])
    return (
        f"{where}: {shown} in the first {sum(counts.values())} rows of {file} are not BCP-47 codes the language "
        "check knows (e.g. pt-BR, es, zh); curation would drop every row in them as wrong_language"
    )


def detect_language(text: str) -> tuple[str, float]:
    """ISO 639-1 code and probability of the text's language."""
    code, prob = _identifier().classify(text)
    return code, float(prob)
