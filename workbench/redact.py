"""Card-number (PAN) redaction: nothing that looks like a card number is ever written.

A candidate is a run of 13 to 19 digits, optionally separated by single spaces or
dashes (as people type them), that passes the Luhn check and starts with 1-9 (no issuer number begins with 0, and
without this rule zero-padded ids such as ``cus_00000000000000`` would be "card numbers").
It is replaced by
``[REDACTED PAN ****1234]`` (keeping at most the last four digits, which PCI DSS
allows to be shown). Runs that fail the Luhn check are left alone (order ids,
timestamps in milliseconds and the like).
"""

from __future__ import annotations

import re

# 13-19 digits, each optionally followed by one space or dash, not glued to other digits.
_CANDIDATE = re.compile(r"(?<![0-9])(?:[0-9][ -]?){12,18}[0-9](?![0-9])")


def luhn_valid(digits: str) -> bool:
    """True when the string of digits passes the Luhn checksum."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def _replace(match: re.Match[str]) -> str:
    digits = re.sub(r"[ -]", "", match.group(0))
    if 13 <= len(digits) <= 19 and digits[0] != "0" and luhn_valid(digits):
        return f"[REDACTED PAN ****{digits[-4:]}]"
    return match.group(0)


def redact_pan(text: str) -> str:
    """Return ``text`` with every Luhn-valid 13-19 digit run replaced by a redaction mark."""
    if not any(ch.isdigit() for ch in text):
        return text
    return _CANDIDATE.sub(_replace, text)


def contains_pan(text: str) -> bool:
    """True when ``text`` holds at least one Luhn-valid 13-19 digit run."""
    return redact_pan(text) != text


def redact_pan_bytes(raw: bytes) -> tuple[bytes, int]:
    """Redact card numbers in raw bytes (decoded as UTF-8 with surrogate escapes so that
    undecodable bytes survive unchanged). Returns the new bytes and how many runs were redacted."""
    text = raw.decode("utf-8", errors="surrogateescape")
    count = 0

    def _counting(match: re.Match[str]) -> str:
        nonlocal count
        out = _replace(match)
        if out != match.group(0):
            count += 1
        return out

    if not any(ch.isdigit() for ch in text):
        return raw, 0
    new = _CANDIDATE.sub(_counting, text)
    return (new.encode("utf-8", errors="surrogateescape") if count else raw), count
