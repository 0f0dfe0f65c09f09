"""Unit tests of the simulator's building blocks: ids, calendar, money arithmetic."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest

from workbench.simulator import billing
from workbench.simulator.ids import CATALOG_ACCOUNT, IdFactory, base62
from workbench.simulator.timeline import Timeline, add_months, parse_start, to_ts


def test_base62_is_fixed_width_and_sorts_like_numbers():
    values = [0, 1, 9, 10, 61, 62, 3843, 3844, 238_327, 916_132_831]
    encoded = [base62(v, 5) for v in values]
    assert all(len(e) == 5 for e in encoded)
    assert encoded == sorted(encoded)
    with pytest.raises(ValueError):
        base62(62**5, 5)


@pytest.mark.parametrize("account", [0, 1, 61, 99_999, CATALOG_ACCOUNT])
def test_ids_are_unique_ordered_and_never_look_like_card_numbers(account):
    ids = IdFactory(seed=123, account=account)
    made = [ids.make(p) for p in ("cus", "sub", "evt", "in", "req", "pm") * 400]
    assert len(set(made)) == len(made)
    evts = [m for m in made if m.startswith("evt_")]
    assert evts == sorted(evts)
    assert all(not re.search(r"\d{13}", m) for m in made)
    assert len(made[0]) == len("cus_") + 14 and len(made[1]) == len("sub_") + 24


def test_ids_differ_between_accounts_and_seeds():
    a = IdFactory(seed=0, account=1).make("sub")
    b = IdFactory(seed=0, account=2).make("sub")
    c = IdFactory(seed=1, account=1).make("sub")
    assert len({a, b, c}) == 3


def test_add_months_clamps_to_month_end_from_the_anchor():
    jan31 = to_ts(datetime(2023, 1, 31, 13, 5, tzinfo=UTC))
    ends = [datetime.fromtimestamp(add_months(jan31, k), tz=UTC) for k in range(1, 5)]
    assert [(d.month, d.day, d.hour, d.minute) for d in ends] == [
        (2, 28, 13, 5),
        (3, 31, 13, 5),
        (4, 30, 13, 5),
        (5, 31, 13, 5),
    ]
    feb29 = to_ts(datetime(2024, 2, 29, tzinfo=UTC))
    assert datetime.fromtimestamp(add_months(feb29, 12), tz=UTC).date().isoformat() == "2025-02-28"


def test_timeline_days_and_months():
    tl = Timeline(parse_start("2023-01-01"), 3)
    assert tl.n_days == 31 + 28 + 31
    assert tl.day_text[0] == "2023-01-01" and tl.day_text[-1] == "2023-03-31"
    assert tl.month_of(tl.month_starts[1]) == 1 and tl.month_of(tl.month_starts[1] - 1) == 0
    assert int(tl.day_month[31]) == 1 and tl.day_weekday[1] == 0  # 2023-01-02 was a Monday
    assert parse_start("2023-05-17T10:00:00+02:00") == datetime(2023, 5, 17, tzinfo=UTC)


def test_round_half_up_and_prorate():
    assert billing.round_half_up(5, 2) == 3
    assert billing.round_half_up(-5, 2) == -3
    assert billing.round_half_up(4, 3) == 1
    assert billing.prorate(3000, remaining=15, period=30) == 1500
    assert billing.prorate(1000, remaining=1, period=3) == 333
    assert billing.prorate(1000, remaining=40, period=30) == 1000


def test_discounts_never_exceed_the_net_amount():
    assert billing.discount_total(net=10_000, percent_off=25.0, amount_off=None) == 2500
    assert billing.discount_total(net=999, percent_off=12.5, amount_off=None) == 125
    assert billing.discount_total(net=3000, percent_off=None, amount_off=5000) == 3000
    assert billing.discount_total(net=-100, percent_off=50.0, amount_off=None) == 0


@pytest.mark.parametrize(
    "total,weights",
    [
        (100, [1, 1, 1]),
        (7, [5, 0, 2]),
        (2500, [9000, 900, 100]),
        (10, [-300, 1000, 500]),
        (0, [1, 2]),
    ],
)
def test_allocate_splits_exactly_and_proportionally(total, weights):
    parts = billing.allocate(total, weights)
    assert sum(parts) == total
    assert all(p == 0 for p, w in zip(parts, weights, strict=True) if w <= 0)
    positive = sum(max(w, 0) for w in weights)
    for p, w in zip(parts, weights, strict=True):
        if w > 0:
            assert abs(p - total * w / positive) < 1


def test_exclusive_tax():
    assert billing.tax_amount(10_000, rate_bp=725) == 725
    assert billing.tax_amount(1_999, rate_bp=2000) == 400
    assert billing.tax_amount(-1_000, rate_bp=1000) == -100
