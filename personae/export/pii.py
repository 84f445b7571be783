"""PII-like strings in free text: emails, phone numbers, URLs, card numbers and credentials.

Each detector is a regular expression plus, where a pattern alone would raise false
alarms, a check on what it matched: a card number must pass the Luhn checksum, a phone
number must have 7–15 digits written in groups (so a year, a range of years, a price or
an order number is not one; a number written without separators is not looked for). Matches never overlap: the more specific kinds (credentials, URLs, emails,
cards) claim their text before phone numbers are looked for.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["PII_KINDS", "PiiMatch", "find_pii", "redact", "luhn_valid", "mask"]

PII_KINDS: tuple[str, ...] = ("credential", "url", "email", "card", "phone")

_CREDENTIALS = re.compile(
    r"""
    \bsk-(?:proj-|ant-)?[A-Za-z0-9_-]{16,}            # OpenAI / Anthropic style keys
    | \bAKIA[0-9A-Z]{16}\b                            # AWS access key id
    | \bgh[pousr]_[A-Za-z0-9]{30,}\b                  # GitHub tokens
    | \bgithub_pat_[A-Za-z0-9_]{30,}\b
    | \bhf_[A-Za-z0-9]{30,}\b                         # Hugging Face tokens
    | \bxox[abprs]-[A-Za-z0-9-]{10,}                  # Slack tokens
    | \bAIza[0-9A-Za-z_-]{35}\b                       # Google API keys
    | \beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}  # JWTs
    | -----BEGIN[A-Z ]*PRIVATE\ KEY-----
    | \bBearer\s+[A-Za-z0-9._~+/-]{16,}=*
    | \b(?:api[_-]?key|secret[_-]?key|access[_-]?token|auth[_-]?token|password|passwd)\s*[:=]\s*["']?[^\s"']{6,}
    """,
    re.VERBOSE | re.IGNORECASE,
)
_URL = re.compile(r"\b(?:https?://|ftp://|www\.)[^\s<>\"'()\[\]{}]+", re.IGNORECASE)
_EMAIL = re.compile(r"(?<![\w.+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b")
_CARD = re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])")
_PHONE = re.compile(r"(?<![\w+])(?:\+\d{1,3}[ .-]?)?(?:\(\d{1,4}\)[ .-]?)?\d{1,4}(?:[ .-]\d{2,5}){1,5}(?![\w])")
_ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_TRAILING = ".,;:!?"


@dataclass(frozen=True)
class PiiMatch:
    """One PII-like string: its kind and where it is (``text[start:end]``)."""

    kind: str
    start: int
    end: int
    value: str


def luhn_valid(digits: str) -> bool:
    """The Luhn checksum every payment card number passes (``digits``: the number's digits only)."""
    if not digits.isdigit() or len(digits) < 2:
        return False
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def _card(value: str) -> bool:
    digits = re.sub(r"\D", "", value)
    return 13 <= len(digits) <= 19 and len(set(digits)) > 1 and luhn_valid(digits)


def _phone(value: str) -> bool:
    digits = re.sub(r"\D", "", value)
    if not 7 <= len(digits) <= 15 or _ISO_DATE.match(value):
        return False
    groups = re.split(r"[ .-]+", re.sub(r"[()+]", " ", value).strip())
    # "1990-2000" or "1 2 3 4 5 6 7" are not written like phone numbers: without a country or area code in
    # front, a phone number has three groups or more, two of them at least three digits long
    return value.startswith(("+", "(")) or (len(groups) >= 3 and sum(len(g) >= 3 for g in groups) >= 2)


_DETECTORS = (("credential", _CREDENTIALS, None), ("url", _URL, None), ("email", _EMAIL, None), ("card", _CARD, _card), ("phone", _PHONE, _phone))


def find_pii(text: str) -> list[PiiMatch]:
    """Every PII-like string in ``text``, in order, none overlapping another."""
    taken: list[tuple[int, int]] = []
    found: list[PiiMatch] = []
    for kind, pattern, check in _DETECTORS:
        for m in pattern.finditer(text):
            start, end = m.start(), m.end()
            if kind == "url":
                while end > start and text[end - 1] in _TRAILING:
                    end -= 1
            value = text[start:end]
            if check is not None and not check(value):
                continue
            if any(start < e and s < end for s, e in taken):
                continue
            taken.append((start, end))
            found.append(PiiMatch(kind, start, end, value))
    return sorted(found, key=lambda f: f.start)


def mask(kind: str) -> str:
    """What replaces a redacted string: its kind in capitals, e.g. ``[EMAIL]``."""
    return f"[{kind.upper()}]"


def redact(text: str, matches: list[PiiMatch] | None = None) -> str:
    """``text`` with every PII-like string replaced by :func:`mask` of its kind."""
    matches = find_pii(text) if matches is None else matches
    out, last = [], 0
    for m in sorted(matches, key=lambda f: f.start):
        out.append(text[last : m.start])
        out.append(mask(m.kind))
        last = m.end
    out.append(text[last:])
    return "".join(out)
