"""Deterministic Stripe-style identifiers.

Every id is ``<prefix>_<body>`` with a base-62 body whose alphabet is in ASCII
order, so ids of one account sort in the order they were made. The body packs
the seed, the account index and a per-account counter, which makes ids unique
across a whole simulated company without any shared state between chunks of
accounts, and the same for the same seed whatever the chunking.

Letters sit between the numeric fields on purpose: no id ever holds a run of 13 or
more digits, so card-number (PAN) detectors never mistake an id for a card.
"""

from __future__ import annotations

ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
LETTERS = ALPHABET[10:]
_BASE = len(ALPHABET)

_PAIRS = [a + b for a in ALPHABET for b in ALPHABET]

#: Account index used for company-wide objects (products, prices, coupons, tax rates).
CATALOG_ACCOUNT = _BASE**5 - 1


def base62(value: int, width: int) -> str:
    """Encode a non-negative integer in base 62, left-padded to ``width`` characters.

    Args:
        value: the number to encode; must fit in ``width`` digits.
        width: the number of characters to return.

    Returns:
        The fixed-width base-62 string (ASCII-ordered alphabet, so string order is numeric order).
    """
    if value < 0 or value >= _BASE**width:
        raise ValueError(f"{value} does not fit in {width} base-62 digits")
    parts = []
    for _ in range(width // 2):
        value, rem = divmod(value, 3844)
        parts.append(_PAIRS[rem])
    if width % 2:
        parts.append(ALPHABET[value])
    return "".join(reversed(parts))


class IdFactory:
    """Make the ids of one account (or of the catalogue).

    Body layout: ``S`` + seed (1) + account (5) + ``m`` + counter (5) + letter + noise, so
    the first 13 characters are unique and ordered, and the rest only looks like Stripe's.
    """

    #: Body length per prefix, close to Stripe's own.
    LENGTHS = {"cus": 14, "req": 14}

    def __init__(self, *, seed: int, account: int) -> None:
        self._head = "S" + ALPHABET[seed % _BASE] + base62(account, 5) + "m"
        self._mix = seed * 0x100000001B3 + account * 0xC2B2AE3D27D4EB4F
        self._counter = 0

    def make(self, prefix: str) -> str:
        """Return the next id with ``prefix`` (e.g. ``"sub"`` gives ``sub_S0…``)."""
        self._counter += 1
        n = self._counter
        body = self._head + base62(n, 5)
        tail_len = self.LENGTHS.get(prefix, 24) - len(body)
        if tail_len > 0:
            noise = ((n + self._mix) * 0x9E3779B97F4A7C15) % (_BASE**10)
            body += LETTERS[noise % len(LETTERS)] + base62(noise, 10)[: tail_len - 1]
        return f"{prefix}_{body}"
