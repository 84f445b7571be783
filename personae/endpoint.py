"""Why an HTTP endpoint (chat or embeddings) could not be reached, said plainly and without secrets.

HTTP clients wrap the operating system's answer several times over; the ``openai`` SDK's
aiohttp transport even reports a refused connection as a connect *timeout*. The cause
chain still holds the original error, so it is the witness read here.
"""

from __future__ import annotations

import errno
import socket
from urllib.parse import urlsplit, urlunsplit

__all__ = ["public_url", "unreachable_reason"]

_MAX_CHAIN = 20


def public_url(url: object) -> str:
    """``url`` without user, password, query or fragment: safe to show in an error."""
    parts = urlsplit(str(url))
    host = parts.hostname or ""
    if ":" in host:  # an IPv6 literal
        host = f"[{host}]"
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def unreachable_reason(exc: BaseException) -> str | None:
    """``"connection refused"`` (nothing listens on that port), ``"host not found"`` (DNS), or ``None``
    when nothing in ``exc``'s cause chain says the endpoint could not be reached at all."""
    node: BaseException | None = exc
    seen: set[int] = set()
    while node is not None and id(node) not in seen and len(seen) < _MAX_CHAIN:
        seen.add(id(node))
        if isinstance(node, socket.gaierror):
            return "host not found"
        if isinstance(node, OSError) and (isinstance(node, ConnectionRefusedError) or node.errno == errno.ECONNREFUSED):
            return "connection refused"
        node = node.__cause__ or node.__context__
    return None
