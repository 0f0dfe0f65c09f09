"""Card-number (PAN) redaction: nothing that looks like a card number is ever written.

A candidate is a run of 13 to 19 digits, optionally separated by single spaces or
dashes (as people type them; also when the run of groups goes on, as in
``4111 1111 1111 1111 05/27``), that passes the Luhn check and starts with 1-9 (no issuer number begins with 0, and
without this rule zero-padded ids such as ``cus_00000000000000`` would be "card numbers").
It is replaced by
``[REDACTED PAN ****1234]`` (keeping at most the last four digits, which PCI DSS
allows to be shown). Runs that fail the Luhn check are left alone (order ids,
timestamps in milliseconds and the like).
"""

from __future__ import annotations

import re

# A chain of digit groups joined by single spaces or dashes, not glued to other digits.
# (The lookahead skips, at regex speed, every chain with fewer than 13 digits.)
_CHAIN = re.compile(r"(?<![0-9])(?=(?:[0-9][ -]?){13})[0-9]+(?:[ -][0-9]+)*(?![0-9])")
_GROUP = re.compile(r"[0-9]+")


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


def _is_pan(digits: str) -> bool:
    return 13 <= len(digits) <= 19 and digits[0] != "0" and luhn_valid(digits)


def _card_spans(chain: str) -> list[tuple[int, int, str]]:
    """Card numbers inside one chain: runs of whole groups, leftmost and longest first.

    A card next to another number ("4111 1111 1111 1111 05/27", "qty 3 4242...") is
    found inside the longer chain; a run of digits without separators is only ever taken
    whole, so long ids are not cut into Luhn-valid pieces.
    """
    groups = [(m.start(), m.end()) for m in _GROUP.finditer(chain)]
    found, i = [], 0
    while i < len(groups):
        best, digits = None, ""
        for j in range(i, len(groups)):  # at most 19 digits: a few groups at a time
            digits += chain[groups[j][0] : groups[j][1]]
            if len(digits) > 19:
                break
            if _is_pan(digits):
                best = (j, digits)
        if best is not None:
            found.append((groups[i][0], groups[best[0]][1], best[1]))
            i = best[0]
        i += 1
    return found


def _replace_chain(match: re.Match[str], counter: list[int] | None = None) -> str:
    chain = match.group(0)
    if sum(ch.isdigit() for ch in chain) < 13:
        return chain
    out, last = [], 0
    for start, end, digits in _card_spans(chain):
        out.append(chain[last:start])
        out.append(f"[REDACTED PAN ****{digits[-4:]}]")
        last = end
        if counter is not None:
            counter[0] += 1
    if not out:
        return chain
    out.append(chain[last:])
    return "".join(out)


def redact_pan(text: str) -> str:
    """Return ``text`` with every Luhn-valid 13-19 digit run replaced by a redaction mark."""
    if not any(ch.isdigit() for ch in text):
        return text
    return _CHAIN.sub(_replace_chain, text)


def contains_pan(text: str) -> bool:
    """True when ``text`` holds at least one Luhn-valid 13-19 digit run."""
    return redact_pan(text) != text


def redact_pan_bytes(raw: bytes) -> tuple[bytes, int]:
    """Redact card numbers in raw bytes (decoded as UTF-8 with surrogate escapes so that
    undecodable bytes survive unchanged). Returns the new bytes and how many runs were redacted."""
    text = raw.decode("utf-8", errors="surrogateescape")
    if not any(ch.isdigit() for ch in text):
        return raw, 0
    count = [0]
    new = _CHAIN.sub(lambda m: _replace_chain(m, count), text)
    return (new.encode("utf-8", errors="surrogateescape") if count[0] else raw), count[0]
