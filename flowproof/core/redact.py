"""Removing secrets from text before it reaches a log line, a metric or an error message."""

from __future__ import annotations

import re
from collections.abc import Iterable

# scheme://user:password@host -> scheme://user:***@host (postgresql, redis, rediss, kafka...)
_URL_USERINFO = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^:/@\s]*):(?P<pw>[^@\s]+)@")
# password=... in DSN query strings or libpq keyword strings
_KEYWORD_PASSWORD = re.compile(r"(?P<key>(?:password|passwd|pwd)\s*=\s*)(?P<pw>[^&\s;]+)", re.I)

MASK = "***"

_registered: set[str] = set()


def register_secret(value: str | None) -> None:
    """Remember a secret value so that `scrub` removes it wherever it appears later."""
    # Very short values would mask ordinary words; such a secret is a config problem anyway.
    if value and len(value) >= 4:
        _registered.add(value)


def registered_secrets() -> Iterable[str]:
    return tuple(_registered)


def redact_url(url: str) -> str:
    """Return the URL or DSN with its password replaced by ***."""
    url = _URL_USERINFO.sub(lambda m: f"{m.group('head')}:{MASK}@", url)
    return _KEYWORD_PASSWORD.sub(lambda m: f"{m.group('key')}{MASK}", url)


def scrub(text: str) -> str:
    """Redact URL passwords and every registered secret value in free text."""
    text = redact_url(text)
    for secret in _registered:
        if secret in text:
            text = text.replace(secret, MASK)
    return text
