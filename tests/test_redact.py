from workbench.redact import contains_pan, luhn_valid, redact_pan, redact_pan_bytes


def test_luhn() -> None:
    assert luhn_valid("4242424242424242") and luhn_valid("79927398713")
    assert not luhn_valid("4242424242424241")


def test_redacts_typed_card_numbers_keeping_last_four() -> None:
    text = "card 4242 4242 4242 4242, amex 3782-822463-10005, visa19 4000000000000000006"
    out = redact_pan(text)
    assert "4242 4242" not in out and "822463" not in out
    assert out.count("[REDACTED PAN ****") == 3 and "****4242" in out and "****0005" in out


def test_leaves_non_cards_alone() -> None:
    for text in (
        "order 4242424242424241",  # fails Luhn
        "cus_00000000000000",  # zero-padded id, Luhn-valid but no issuer starts with 0
        "ts 1700000000",  # too short
        "12345678901234567890123",  # too long to be a PAN (20+ digits glued)
    ):
        assert redact_pan(text) == text and not contains_pan(text)


def test_bytes_keep_undecodable_bytes_and_count() -> None:
    raw = b'{"note": "5555555555554444", "bin": "\xff"}'
    out, n = redact_pan_bytes(raw)
    assert n == 1 and b"5555555555554444" not in out and out.endswith(b'"\xff"}')
    assert redact_pan_bytes(b"nothing here") == (b"nothing here", 0)


def test_finds_a_card_inside_a_longer_run_of_digit_groups() -> None:
    # the groups before or after a card (expiry, a quantity) must not hide it
    cases = {
        "4111 1111 1111 1111 05/27": "[REDACTED PAN ****1111] 05/27",
        "qty 3 4242424242424242": "qty 3 [REDACTED PAN ****4242]",
        "ref 12-4242-4242-4242-4242-7": "ref 12-[REDACTED PAN ****4242]-7",
    }
    for text, expected in cases.items():
        assert redact_pan(text) == expected and contains_pan(text)
    out, n = redact_pan_bytes(b"exp 4111 1111 1111 1111 05 and 5555555555554444 9")
    assert n == 2 and b"1111 1111" not in out and b"5555555555554444" not in out
    # a glued run is still only taken whole: a 23-digit id is not cut into a "card"
    assert redact_pan("id 42424242424242421234567") == "id 42424242424242421234567"
