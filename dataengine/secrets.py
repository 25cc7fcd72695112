"""Keeping secrets out of everything the engine writes: recipe copies, dataset cards, logs of our own.

Recipes may carry credentials through `${VAR}` (an endpoint URL with a password, `--api-key` in vLLM's
extra args, HF_TOKEN in the server's env); the Hub token lives in huggingface_hub's own store.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

REMOVED = "<removed>"
# a key *named* as a secret (HF_TOKEN, api_key), not one that merely mentions tokens (max_tokens)
SECRET_KEY = re.compile(r"(^|[_-])(token|secret|password|passwd|api[_-]?key|authorization|credentials?)$", re.I)
SECRET_FLAG = re.compile(r"^--?(api[_-]?key|token|hf[_-]token|password)(=.*)?$", re.IGNORECASE)


def scrub(value, secrets: tuple[str, ...] = ()):
    """The recipe with secrets removed: secret-named keys, the value after a secret flag (`--api-key X`),
    credentials in URLs, and any known secret string wherever it appears."""
    if isinstance(value, dict):
        return {k: REMOVED if SECRET_KEY.search(k) and v is not None else scrub(v, secrets) for k, v in value.items()}
    if isinstance(value, list):
        out, hide_next = [], False
        for item in value:
            if hide_next:
                out.append(REMOVED)
                hide_next = False
                continue
            if isinstance(item, str) and (m := SECRET_FLAG.match(item)):
                hide_next = m.group(2) is None
                out.append(item if hide_next else item.split("=", 1)[0] + "=" + REMOVED)
                continue
            out.append(scrub(item, secrets))
        return out
    if isinstance(value, str):
        for secret in secrets:
            if secret:
                value = value.replace(secret, REMOVED)
        if "://" in value:
            parts = urlsplit(value)
            if parts.username or parts.password:
                value = urlunsplit(parts._replace(netloc=f"{REMOVED}@{parts.hostname}" +
                                                  (f":{parts.port}" if parts.port else "")))  # fmt: skip
        return value
    return value


def hub_token() -> str | None:
    """The token huggingface_hub will use (HF_TOKEN or `hf auth login`); read only to keep it out of files."""
    from huggingface_hub import get_token

    return get_token()


def scrub_known(value):
    """`scrub` with the Hub token as a known secret."""
    return scrub(value, tuple(t for t in (hub_token(),) if t))
