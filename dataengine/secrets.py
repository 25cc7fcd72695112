"""Keeping secrets out of everything the engine writes: recipe copies, dataset cards, logs of our own.

Recipes may carry credentials through `${VAR}` (an endpoint URL with a password, `--api-key` in vLLM's
extra args, HF_TOKEN in the server's env); the Hub token lives in huggingface_hub's own store.
"""

from __future__ import annotations

import re

REMOVED = "<removed>"
# a key *named* as a secret (HF_TOKEN, api_key, AWS_SECRET_ACCESS_KEY, PGPASSWORD), not one that merely
# mentions tokens (max_tokens)
SECRET_KEY = re.compile(
    r"(secret|passw(or)?d|api[_-]?key|access[_-]?key|private[_-]?key|authorization|credential|(^|[_-])token$)", re.I
)
FLAG = re.compile(r"^(--?[A-Za-z0-9_-]+)(=.*)?$")
URL_CREDENTIALS = re.compile(r"(\b[a-z][a-z0-9+.-]*://)[^/\s@]+@", re.I)
QUERY_PARAM = re.compile(r"([?&;]([^=&\s]+)=)([^&\s#]*)")


def scrub(value, secrets: tuple[str, ...] = ()):
    """The recipe with secrets removed: values of secret-named keys, the value of a secret-named flag
    (`--api-key X`, `--token=X`), credentials and secret query parameters in URLs anywhere in a string, and
    any known secret string wherever it appears."""
    if isinstance(value, dict):
        return {k: REMOVED if SECRET_KEY.search(k) and v is not None else scrub(v, secrets) for k, v in value.items()}
    if isinstance(value, list):
        return _scrub_args(value, secrets)
    if isinstance(value, str):
        for secret in secrets:
            if secret:
                value = value.replace(secret, REMOVED)
        value = URL_CREDENTIALS.sub(lambda m: f"{m.group(1)}{REMOVED}@", value)
        return QUERY_PARAM.sub(lambda m: m.group(1) + (REMOVED if SECRET_KEY.search(m.group(2)) else m.group(3)), value)
    return value


def _scrub_args(items: list, secrets: tuple[str, ...]) -> list:
    """A command line: after a secret-named flag, its value goes whether it is `--flag=V` or `--flag V`."""
    out, hide_next = [], False
    for item in items:
        if hide_next:
            out.append(REMOVED)
            hide_next = False
            continue
        flag = FLAG.match(item) if isinstance(item, str) else None
        if flag and SECRET_KEY.search(flag.group(1).lstrip("-")):
            hide_next = flag.group(2) is None
            out.append(flag.group(1) if hide_next else f"{flag.group(1)}={REMOVED}")
            continue
        out.append(scrub(item, secrets))
    return out


def hub_token() -> str | None:
    """The token huggingface_hub will use (HF_TOKEN or `hf auth login`); read only to keep it out of files."""
    from huggingface_hub import get_token

    return get_token()


# values that `${VAR}` put into a recipe from variables named like secrets (TEACHER_API_KEY, HF_TOKEN):
# removed wherever they land, even in a field with an innocent name (`teacher.endpoint`, a description)
_FROM_ENV: set[str] = set()
MIN_SECRET = 8


def remember(name: str, value: str) -> None:
    """Called for every `${VAR}` a recipe reads; keeps the value when the variable's name looks secret."""
    # a short value is a placeholder (vLLM's api key "EMPTY", "none"), not a secret: replacing it in every
    # string would garble the recipe copy
    if len(value) >= MIN_SECRET and SECRET_KEY.search(name):
        _FROM_ENV.add(value)


def known_secrets() -> tuple[str, ...]:
    """The Hub token and every secret a loaded recipe read from the environment, longest first (so that a
    secret containing another is removed whole)."""
    return tuple(sorted({t for t in (hub_token(), *_FROM_ENV) if t}, key=len, reverse=True))


def scrub_known(value):
    """`scrub` with every known secret."""
    return scrub(value, known_secrets())
