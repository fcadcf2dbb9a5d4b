"""The one place that decides how a store URL is shown: without its secrets.

``redact_url(url)`` is what every message, log line, ``repr``, metric HELP
text, OpenTelemetry description and HTTP error body shows instead of the URL
itself (``store.url`` keeps the real one, to reopen the store).  It hides:

- the userinfo (``user:password@``, or a lone ``token@``) of any URL that has
  a network location, wholly: ``redis://***@host:6379/0``;
- the value of every query parameter whose name has a word that names a
  secret (``password``, ``pwd``, ``pass``, ``token``, ``secret``, ``auth``,
  ``key``, ``api_key``, ``credential``, ``sig``...; words are split at ``_``,
  ``-`` and ``.``): ``?password=***``, but ``?keys=256`` as it is.

It works on any string, even one that is not a valid URL (error messages show
what the user typed): everything before the last ``@`` of the part before the
query is userinfo, so a password containing ``/`` or ``#`` is hidden too.
File-like schemes (``shm://``, ``memory://``, ``sqlite://``) have no userinfo:
an ``@`` in a segment name or path is shown as it is.
"""

from __future__ import annotations

import re

__all__ = ["redact_url"]

MASK = "***"

#: Schemes whose target is a name or a path, never ``user@host``.
_NO_USERINFO = frozenset({"shm", "memory", "sqlite"})

#: A query parameter is secret when a word of its name (split at ``_ - .``) is one of these.
_SECRET_WORDS = frozenset(
    [
        "password",
        "passwd",
        "pwd",
        "pass",
        "passphrase",
        "token",
        "secret",
        "auth",
        "authorization",
        "key",
        "apikey",
        "accesskey",
        "secretkey",
        "credential",
        "credentials",
        "sig",
        "signature",
    ]
)


def _secret(name: str) -> bool:
    return any(w in _SECRET_WORDS for w in re.split(r"[-_.]", name.lower()))


def _query(query: str) -> str:
    parts = []
    for part in query.split("&"):
        name, sep, _ = part.partition("=")
        parts.append(f"{name}={MASK}" if sep and _secret(name) else part)
    return "&".join(parts)


def redact_url(url: str) -> str:
    """``url`` with its userinfo and secret-looking query values masked."""
    if not isinstance(url, str):
        return repr(type(url))
    scheme, sep, rest = url.partition("://")
    if not sep:
        # not scheme://... : still hide what looks like userinfo or a secret
        head, qsep, query = url.partition("?")
        if "@" in head:
            head = MASK + head[head.rindex("@") :]
        return head + qsep + (_query(query) if qsep else "")
    target, qsep, query = rest.partition("?")
    if "@" in target and scheme.lower() not in _NO_USERINFO:
        target = MASK + target[target.rindex("@") :]
    return f"{scheme}://{target}" + (qsep + _query(query) if qsep else "")
