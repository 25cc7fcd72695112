"""Language identification that runs offline.

datatrove's `LanguageFilter` downloads a fastText model at run time, which fails offline;
py3langid ships its model inside the wheel.
"""

from __future__ import annotations

from functools import cache


@cache
def _identifier():
    from py3langid.langid import MODEL_DIR, MODEL_FILE, LanguageIdentifier

    # the model shipped in the wheel, with probabilities normalised to [0, 1] (the default gives log-scores)
    return LanguageIdentifier.from_modelpath(MODEL_DIR / MODEL_FILE, norm_probs=True)


def known_languages() -> set[str]:
    """The ISO 639-1 codes the identifier tells apart: a row asked in another language cannot pass the check."""
    return set(_identifier().nb_classes)


def detect_language(text: str) -> tuple[str, float]:
    """ISO 639-1 code and probability of the text's language."""
    code, prob = _identifier().classify(text)
    return code, float(prob)
