"""A synthetic e-commerce order log with the structure real repurchase data has.

:func:`generate_order_log` simulates customers of a Chinese online shop over a few years
and returns one row per order line. The log is built so that a BG/NBD model explains
part of it and the rest is left for models that use more than (frequency, recency, T):

* **Acquisition.** First orders are spread over the whole period, more of them in the
  first year, so customers have different ages at any cutoff.
* **Regular buying (every customer).** A BG/NBD-like process (Fader, Hardie & Lee 2005):
  purchase rate ``lambda ~ Gamma(r, alpha)`` and dropout ``p ~ Beta(a, b)`` per
  customer, the customer drops out after each purchase with probability ``p``. Gaps are
  exponential for storefront-leaning customers, but Erlang (gamma shape 4, same mean)
  for community-leaning ones, who also drop out less: community buyers reorder more
  regularly, which BG/NBD's Poisson assumption cannot see but gap features can.
* **Replenishment (about 30% of customers).** 1-3 consumable categories each, with the
  category's base cycle (:data:`REPLENISHMENT_CYCLE_DAYS`) times a customer factor
  (lognormal, sd 0.2). The gap after a purchase is ``cycle * units bought * noise``
  (lognormal, sd 0.12): two units last twice as long. Units are 1-3, mostly 1. After
  each purchase the customer stops buying that category with probability 5% (community)
  or 7.5% (storefront).
* **Calendar.** Before 6.18 (June 18) and 11.11 (November 11) some orders due in the two
  weeks before are held back to the festival day; on the day, recently active customers
  add impulse orders (storefront customers more than community ones), many at midnight,
  prices are discounted and replenishment buyers stock up (more units, a longer gap).
  Around the Spring Festival (hard-coded dates) 60% of orders due in a 10-day window
  are postponed until after it. Chains continue from the moved time, so a held-back
  replenishment purchase shifts the cycle after it.
* **Lines and money.** Most orders have one line; about 13% have 2-3 (add-on items from
  the non-replenishment categories). Non-replenishment line values follow Gamma-Gamma
  (Fader, Hardie & Lee 2005, "RFM and CLV"): a customer spend scale ``nu ~ Gamma(q,
  gamma)``, values ``~ Gamma(p, nu)`` times a category price level. Replenishment lines
  are the product's unit price times the units bought.

Everything is vectorised over customers (or order chains); Python loops run only over
purchase rounds, festivals and categories. One million customers (about 11M lines)
take well under a minute.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa

from features.common.errors import InputError
from features.timecut import until

COLUMNS = ["customer_id", "order_id", "order_ts", "amount", "quantity", "product_id", "category", "channel"]

#: Base replenishment cycle of each consumable category, in days per unit bought.
REPLENISHMENT_CYCLE_DAYS = {
    "diapers": 14.0,
    "coffee": 21.0,
    "pet_food": 30.0,
    "skincare_refill": 45.0,
    "water_filter": 60.0,
    "vitamins": 90.0,
}
#: Unit price of an average product in each replenishment category.
REPLENISHMENT_UNIT_PRICE = {
    "diapers": 119.0,
    "coffee": 69.0,
    "pet_food": 149.0,
    "skincare_refill": 189.0,
    "water_filter": 99.0,
    "vitamins": 159.0,
}
_REPLENISHMENT_POPULARITY = np.array([0.16, 0.22, 0.22, 0.16, 0.10, 0.14])

#: Non-replenishment categories: (popularity, price level relative to the customer's mean).
OTHER_CATEGORIES = {
    "apparel": (0.24, 1.0),
    "beauty": (0.14, 0.9),
    "snacks": (0.16, 0.35),
    "home": (0.14, 1.3),
    "electronics": (0.08, 2.6),
    "books": (0.08, 0.5),
    "toys": (0.07, 0.8),
    "sports": (0.09, 1.2),
}

CHANNELS = ("community", "storefront")

#: Spring Festival (Chinese New Year's day) by year.
SPRING_FESTIVAL = {
    2021: "2021-02-12",
    2022: "2022-02-01",
    2023: "2023-01-22",
    2024: "2024-02-10",
    2025: "2025-01-29",
    2026: "2026-02-17",
    2027: "2027-02-06",
}
#: The quiet window around the Spring Festival, in days relative to New Year's day.
SPRING_FESTIVAL_QUIET = (-5, 5)

#: Shopping festivals: (month, day, share of orders due in the 14 days before that wait
#: for the day, probability that a recently active customer adds an impulse order).
SHOPPING_FESTIVALS = {"6.18": (6, 18, 0.25, 0.05), "11.11": (11, 11, 0.40, 0.10)}
_PULL_WINDOW_DAYS = 14.0
_FESTIVAL_DISCOUNT = 0.85

_PRODUCTS_PER_CATEGORY = 120
_ID_DIGITS_CUSTOMER = 7
_ID_DIGITS_ORDER = 9

# Regular process: BG/NBD-like parameters per day, by channel leaning.
_RATE_SHAPE, _RATE_SCALE = 0.9, 1 / 35.0  # mean about one purchase per 39 days
_DROPOUT_BETA = {"community": (1.0, 9.0), "storefront": (1.0, 4.0)}
_GAP_SHAPE = {"community": 4.0, "storefront": 1.0}
_COMMUNITY_SHARE = 0.4
_REPLENISHMENT_SHARE = 0.3
_REPLENISHER_REGULAR_RATE = 0.4  # replenishment customers shop for other things less
_STOP_PROBABILITY = {"community": 0.05, "storefront": 0.075}
# Gamma-Gamma spend: p, q, gamma (mean order value p * gamma / (q - 1) = 120).
_GG_P, _GG_Q, _GG_GAMMA = 4.0, 5.0, 120.0
_EXTRA_LINES_P = np.array([0.87, 0.095, 0.035])  # orders with 1, 2, 3 lines


def generate_order_log(
    n_customers: int, seed: int = 0, start: str = "2023-01-01", end: str = "2025-12-31"
) -> pd.DataFrame:
    """Simulate an order log, one row per order line.

    Parameters
    ----------
    n_customers : int
        Customers to simulate; those whose first order falls after ``end`` do not appear.
    seed : int
        Seed of the ``numpy.random.Generator``; the same seed gives the same log.
    start, end : str
        First and last calendar day of the log (inclusive); later orders are dropped.

    Returns
    -------
    pandas.DataFrame
        Columns ``customer_id``, ``order_id``, ``order_ts``, ``amount``, ``quantity``,
        ``product_id``, ``category``, ``channel``, sorted by ``order_ts`` then
        ``order_id``. Ids and labels are pandas' ``str`` dtype, ``order_ts`` is
        ``datetime64[ns]``, ``amount`` and ``quantity`` are ``float64``.
    """
    if int(n_customers) != n_customers or n_customers < 1:
        raise InputError(f"n_customers must be a positive integer, got {n_customers!r}")
    start_day, end_day = pd.Timestamp(start).normalize(), pd.Timestamp(end).normalize()
    if end_day < start_day:
        raise InputError(f"end {end} is before start {start}")
    n = int(n_customers)
    rng = np.random.default_rng(seed)
    horizon = float((end_day - start_day).days + 1)
    calendar = _Calendar(start_day, end_day)
    customers = _draw_customers(n, horizon, rng, calendar)

    regular = _regular_orders(customers, horizon, rng, calendar)
    replenishment = _replenishment_orders(customers, horizon, rng, calendar)
    impulse = _impulse_orders(customers, [regular, replenishment], horizon, rng, calendar)
    parts = (regular, replenishment, impulse)
    orders = {key: np.concatenate([part.pop(key) for part in parts]) for key in list(impulse)}
    del parts
    orders = _in_time_order(orders, rng, calendar)
    lines = _lines(orders, customers, rng, calendar)
    del orders
    return _frame(lines, n, start_day)


class _Calendar:
    """Festival and Spring Festival days as day offsets from the start of the log."""

    def __init__(self, start_day: pd.Timestamp, end_day: pd.Timestamp):
        if start_day.year not in SPRING_FESTIVAL or end_day.year not in SPRING_FESTIVAL:
            raise InputError(
                f"Spring Festival dates are known for {min(SPRING_FESTIVAL)}-{max(SPRING_FESTIVAL)} only; "
                f"got {start_day.date()} to {end_day.date()}"
            )
        n_days = (end_day - start_day).days + 1
        years = range(start_day.year - 1, end_day.year + 2)
        festivals = []
        for month, day, pull, impulse in SHOPPING_FESTIVALS.values():
            for year in years:
                offset = (pd.Timestamp(year=year, month=month, day=day) - start_day).days
                festivals.append((offset, pull, impulse))
        festivals.sort()
        self.festival_days = np.array([f[0] for f in festivals], dtype=np.float64)
        self.pull_share = np.array([f[1] for f in festivals])
        self.impulse_share = np.array([f[2] for f in festivals])
        inside = self.festival_days[(self.festival_days >= 0) & (self.festival_days < n_days)].astype(np.int64)
        self._festival_mask = np.zeros(n_days + 1, dtype=bool)  # the last entry: any later day
        self._festival_mask[inside] = True
        new_years = [(pd.Timestamp(d) - start_day).days for y, d in SPRING_FESTIVAL.items() if y in years]
        self.quiet_start = np.array(sorted(new_years), dtype=np.float64) + SPRING_FESTIVAL_QUIET[0]
        self.quiet_end = self.quiet_start + (SPRING_FESTIVAL_QUIET[1] - SPRING_FESTIVAL_QUIET[0])

    def adjust(self, t: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Move would-be order times: wait for a festival, or postpone past the Spring Festival."""
        nxt = np.searchsorted(self.festival_days, t, side="right")
        nxt_day = self.festival_days[np.minimum(nxt, len(self.festival_days) - 1)]
        wait = (nxt_day - t <= _PULL_WINDOW_DAYS) & (nxt_day > t)
        wait &= rng.random(t.size) < self.pull_share[np.minimum(nxt, len(self.festival_days) - 1)]
        t = np.where(wait, nxt_day + rng.random(t.size), t)

        k = np.maximum(np.searchsorted(self.quiet_start, t, side="right") - 1, 0)
        quiet = (t >= self.quiet_start[k]) & (t < self.quiet_end[k])
        postpone = quiet & (rng.random(t.size) < 0.6)
        return np.where(postpone, self.quiet_end[k] + rng.exponential(7.0, t.size), t)

    def is_festival_day(self, day: np.ndarray) -> np.ndarray:
        """Whether whole days (offsets from the start, inside the log) are festival days."""
        last = self._festival_mask.size - 1
        return self._festival_mask[np.clip(day, 0, last).astype(np.int64)]


def _draw_customers(n: int, horizon: float, rng: np.random.Generator, calendar: _Calendar) -> dict:
    """Customer traits: acquisition time, channel leaning, segment, rates, spend scale."""
    # A third of the customers join in the first year, the rest evenly over the whole
    # period: more than half of all first orders fall in the first year.
    first_year = rng.random(n) < 0.35
    acquired = np.where(first_year, rng.random(n) * min(365.0, horizon), rng.random(n) * horizon)
    acquired = calendar.adjust(acquired, rng)
    community = rng.random(n) < _COMMUNITY_SHARE
    community_share = np.where(community, rng.beta(8.0, 2.0, n), rng.beta(1.0, 7.0, n))
    replenisher = rng.random(n) < _REPLENISHMENT_SHARE
    rate = np.minimum(rng.gamma(_RATE_SHAPE, _RATE_SCALE, n), 1 / 3)
    rate = np.where(replenisher, rate * _REPLENISHER_REGULAR_RATE, rate)
    dropout = np.where(
        community, rng.beta(*_DROPOUT_BETA["community"], n), rng.beta(*_DROPOUT_BETA["storefront"], n)
    )
    gap_shape = np.where(community, _GAP_SHAPE["community"], _GAP_SHAPE["storefront"])
    spend_scale = rng.gamma(_GG_Q, 1 / _GG_GAMMA, n)  # nu; order values ~ Gamma(p, nu)
    other_popularity = np.array([v[0] for v in OTHER_CATEGORIES.values()])
    favourite = _categorical(rng, other_popularity, n)
    return {
        "n": n,
        "acquired": acquired,
        "community": community,
        "community_share": community_share,
        "replenisher": replenisher,
        "rate": rate,
        "dropout": dropout,
        "gap_shape": gap_shape,
        "spend_scale": spend_scale,
        "favourite": favourite.astype(np.int16),
    }


def _categorical(rng: np.random.Generator, p, size: int) -> np.ndarray:
    """Draws of ``0 .. len(p)-1`` with probabilities ``p``, to a resolution of 2**-16.

    A lookup table indexed by 16-bit random integers: several times faster than
    ``Generator.choice(..., p=...)`` on millions of draws, which matters in the hot paths.
    """
    cdf = np.cumsum(np.asarray(p, dtype=np.float64))
    table = np.searchsorted(cdf / cdf[-1], (np.arange(2**16) + 0.5) / 2**16, side="right")
    return table.astype(np.int16)[rng.integers(0, 2**16, size, dtype=np.uint16)]


def _orders(customer, t, product, units) -> dict:
    """Simulated orders; ``product`` and ``units`` are -1 for orders other than replenishment."""
    return {
        "customer": customer.astype(np.int32),
        "t": t,
        "product": product.astype(np.int32),
        "units": units.astype(np.int8),
    }


def _regular_orders(customers: dict, horizon: float, rng: np.random.Generator, calendar: _Calendar) -> dict:
    """The BG/NBD-like chain, simulated one purchase round at a time for all customers.

    Category, product and units of these orders are drawn later (``product`` = -1).
    Replenishment customers' first order is a replenishment purchase, so their regular
    chain starts from it without an order of its own.
    """
    who = np.flatnonzero(customers["acquired"] < horizon)
    t = customers["acquired"][who]
    emit = ~customers["replenisher"][who]
    found_customer, found_t = [who[emit]], [t[emit]]
    while who.size:
        stays = rng.random(who.size) >= customers["dropout"][who]
        shape = customers["gap_shape"][who]
        gap = rng.gamma(shape, 1.0 / (shape * customers["rate"][who]))
        t = calendar.adjust(t + gap, rng)
        keep = stays & (t < horizon)
        who, t = who[keep], t[keep]
        found_customer.append(who)
        found_t.append(t)
    customer = np.concatenate(found_customer)
    minus_one = np.full(customer.size, -1)
    return _orders(customer, np.concatenate(found_t), minus_one, minus_one)


def _replenishment_units(size: int, rng: np.random.Generator, festival: np.ndarray) -> np.ndarray:
    """Units per replenishment order: mostly 1; festival prices make customers stock up."""
    usual = _categorical(rng, [0.76, 0.19, 0.05], size) + 1
    stocked = _categorical(rng, [0.45, 0.40, 0.15], size) + 1
    return np.where(festival, stocked, usual)


def _replenishment_orders(customers: dict, horizon: float, rng: np.random.Generator, calendar: _Calendar) -> dict:
    """Purchase chains per (customer, replenishment category), one round at a time."""
    n_categories = len(REPLENISHMENT_CYCLE_DAYS)
    base_cycle = np.array(list(REPLENISHMENT_CYCLE_DAYS.values()))
    replenishers = np.flatnonzero(customers["replenisher"] & (customers["acquired"] < horizon))
    n_streams = _categorical(rng, [0.6, 0.3, 0.1], replenishers.size) + 1
    # Distinct categories per customer: rank categories by Gumbel-perturbed log popularity.
    keys = np.log(_REPLENISHMENT_POPULARITY) + rng.gumbel(size=(replenishers.size, n_categories))
    ranked = np.argsort(-keys, axis=1)
    nth = _positions(n_streams)
    owner = np.repeat(np.arange(replenishers.size), n_streams)
    category = ranked[owner, nth]
    customer = replenishers[owner]
    # The first stream starts with the first order; later ones are adopted afterwards.
    t = customers["acquired"][customer] + np.where(nth == 0, 0.0, rng.exponential(150.0, owner.size))
    t = np.where(nth == 0, t, calendar.adjust(t, rng))
    cycle = base_cycle[category] * rng.lognormal(0.0, 0.2, owner.size)
    stop = np.where(customers["community"][customer], _STOP_PROBABILITY["community"], _STOP_PROBABILITY["storefront"])
    # Each customer sticks to a product of the category, with a few switching later.
    product = category * _PRODUCTS_PER_CATEGORY + _zipf_products(owner.size, rng)

    live = t < horizon
    customer, category, t, cycle, stop, product = (a[live] for a in (customer, category, t, cycle, stop, product))
    found = []
    while customer.size:
        units = _replenishment_units(customer.size, rng, calendar.is_festival_day(np.floor(t)))
        switch = rng.random(customer.size) < 0.04
        product = np.where(switch, category * _PRODUCTS_PER_CATEGORY + _zipf_products(customer.size, rng), product)
        found.append(_orders(customer, t, product, units))
        stays = rng.random(customer.size) >= stop
        t = calendar.adjust(t + cycle * units * rng.lognormal(0.0, 0.12, customer.size), rng)
        keep = stays & (t < horizon)
        customer, category, t, cycle, stop, product = (a[keep] for a in (customer, category, t, cycle, stop, product))
    if not found:
        empty = np.zeros(0, dtype=np.int64)
        return _orders(empty, empty.astype(np.float64), empty, empty)
    return {key: np.concatenate([f[key] for f in found]) for key in found[0]}


def _positions(counts: np.ndarray) -> np.ndarray:
    """0, 1, ..., count-1 for each count, concatenated: the position inside each group."""
    ends = np.cumsum(counts)
    return np.arange(ends[-1] if counts.size else 0) - np.repeat(ends - counts, counts)


def _zipf_products(size: int, rng: np.random.Generator) -> np.ndarray:
    """Product numbers inside a category; a few best sellers, a long tail."""
    weights = 1.0 / (np.arange(_PRODUCTS_PER_CATEGORY) + 3.0)
    return _categorical(rng, weights, size)


def _impulse_orders(
    customers: dict, simulated: list[dict], horizon: float, rng: np.random.Generator, calendar: _Calendar
) -> dict:
    """Extra orders on festival days from customers active around the festival.

    "Active" means acquired by the festival with an order in the 60 days before it or at
    any time after it (a customer still alive then).
    """
    last = np.full(customers["n"], -np.inf)
    for orders in simulated:
        np.maximum.at(last, orders["customer"], orders["t"])
    found_customer, found_t = [], []
    for day, share in zip(calendar.festival_days, calendar.impulse_share):
        if not 0 <= day < horizon:
            continue
        engaged = (customers["acquired"] <= day) & (last >= day - 60.0)
        chance = share * np.where(customers["community"], 0.6, 1.6)
        who = np.flatnonzero(engaged & (rng.random(customers["n"]) < chance))
        found_customer.append(who)
        found_t.append(day + rng.random(who.size))
    customer = np.concatenate(found_customer) if found_customer else np.zeros(0, dtype=np.int64)
    t = np.concatenate(found_t) if found_t else np.zeros(0)
    minus_one = np.full(customer.size, -1)
    return _orders(customer, t, minus_one, minus_one)


def _time_of_day(day: np.ndarray, rng: np.random.Generator, calendar: _Calendar) -> np.ndarray:
    """Seconds after midnight: lunch, afternoon and evening peaks; festival midnight rush."""
    component = _categorical(rng, [0.15, 0.3, 0.55], day.size)
    hour = rng.normal(np.array([10.5, 14.5, 21.0])[component], np.array([1.5, 2.0, 1.8])[component]) % 24.0
    rush = calendar.is_festival_day(day) & (rng.random(day.size) < 0.3)
    hour = np.where(rush, rng.random(day.size), hour)
    return np.minimum(hour * 3600.0, 86399.0).astype(np.int64)


def _sequential_ids(prefix: str, count: int, digits: int) -> np.ndarray:
    """``prefix`` + zero-padded 1, 2, ..., ``count`` as rows of ASCII bytes, shape (count, width).

    Numbers are laid out in blocks of 10,000: the last four digits of every block are the
    same table, the leading digits are the block number, so the rows are filled by
    broadcasting instead of by digit arithmetic on every number.
    """
    if digits < 4:
        raise ValueError("ids need at least four digits")
    width = len(prefix) + digits
    blocks = (count + 1 + 9_999) // 10_000
    chars = np.empty((blocks, 10_000, width), dtype=np.uint8)
    chars[:, :, : len(prefix)] = np.frombuffer(prefix.encode(), dtype=np.uint8)
    chars[:, :, width - 4 :] = _FOUR_DIGITS
    block = np.arange(blocks)
    for end in range(width - 4, len(prefix), -4):
        block, group = np.divmod(block, 10_000)
        begin = max(end - 4, len(prefix))
        chars[:, :, begin:end] = _FOUR_DIGITS[group][:, None, 4 - (end - begin) :]
    return chars.reshape(-1, width)[1 : count + 1]


_FOUR_DIGITS = np.frombuffer("".join(f"{k:04d}" for k in range(10_000)).encode(), dtype=np.uint8).reshape(-1, 4)


def _string_array(chars: np.ndarray) -> pa.Array:
    """An Arrow string array over fixed-width rows of ASCII bytes, without a copy per string."""
    n, width = chars.shape
    large = n * width >= 2**31
    offsets = np.arange(0, (n + 1) * width, width, dtype=np.int64 if large else np.int32)
    kind = pa.LargeStringArray if large else pa.StringArray
    return kind.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(np.ascontiguousarray(chars)))


def _strings(values: pa.Array) -> pd.api.extensions.ExtensionArray:
    return pd.array(values, dtype=pd.StringDtype("pyarrow", na_value=np.nan))


def _in_time_order(orders: dict, rng: np.random.Generator, calendar: _Calendar) -> dict:
    """Orders with a time of day (``second`` since the start), sorted by it."""
    day = np.floor(orders["t"])
    second = day.astype(np.int64) * 86400 + _time_of_day(day, rng, calendar)
    # Sorting unique composite keys is deterministic and much faster than a stable argsort.
    n_orders = second.size
    by_time = np.sort(second * n_orders + np.arange(n_orders)) % n_orders
    return {
        "customer": orders["customer"][by_time],
        "second": second[by_time],
        "product": orders["product"][by_time],
        "units": orders["units"][by_time],
    }


def _lines(orders: dict, customers: dict, rng: np.random.Generator, calendar: _Calendar) -> dict:
    """Expand orders into lines: channel, category, product, units and money per line.

    The first line of an order is what the order was simulated for (a replenishment
    purchase, or -1 for a regular one); extra lines are add-ons from the other categories.
    """
    n_orders = orders["customer"].size
    community = rng.random(n_orders) < customers["community_share"][orders["customer"]]
    n_lines = _categorical(rng, _EXTRA_LINES_P, n_orders) + 1
    first_line = np.zeros(int(n_lines.sum()), dtype=bool)
    first_line[np.cumsum(n_lines) - n_lines] = True
    order = (np.cumsum(first_line) - 1).astype(np.int32 if n_orders < 2**31 else np.int64)
    customer = orders["customer"][order]
    product = np.where(first_line, orders["product"][order], -1).astype(np.int32)
    units = np.where(first_line, orders["units"][order], -1).astype(np.float64)
    del first_line

    # Lines that are not replenishment purchases: the customer's favourite category or a
    # popular one, values by Gamma-Gamma scaled by the category's price level.
    n_replenishment = len(REPLENISHMENT_CYCLE_DAYS)
    other = np.flatnonzero(product < 0)
    popularity = np.array([v[0] for v in OTHER_CATEGORIES.values()])
    price_level = np.array([v[1] for v in OTHER_CATEGORIES.values()])
    price_level = price_level / (popularity @ price_level)
    other_category = np.where(
        rng.random(other.size) < 0.45,
        customers["favourite"][customer[other]],
        _categorical(rng, popularity, other.size),
    )
    product[other] = (n_replenishment + other_category) * _PRODUCTS_PER_CATEGORY + _zipf_products(other.size, rng)
    units[other] = _categorical(rng, [0.86, 0.1, 0.04], other.size) + 1
    value = np.empty(order.size)
    value[other] = rng.gamma(_GG_P, 1.0 / customers["spend_scale"][customer[other]]) * price_level[other_category]
    del other, other_category

    # Replenishment products have a price list: category price times a product factor.
    list_price = np.repeat(np.array(list(REPLENISHMENT_UNIT_PRICE.values())), _PRODUCTS_PER_CATEGORY)
    list_price *= rng.lognormal(0.0, 0.25, list_price.size)
    replenishment = np.flatnonzero(product < n_replenishment * _PRODUCTS_PER_CATEGORY)
    value[replenishment] = list_price[product[replenishment]]
    del replenishment

    second = orders["second"][order]
    value *= units
    value[calendar.is_festival_day(second // 86400)] *= _FESTIVAL_DISCOUNT
    amount = np.maximum(np.round(value, 2), 0.01)
    del value
    return {
        "customer": customer,
        "order": order,
        "second": second,
        "amount": amount,
        "units": units,
        "product": product,
        "channel": np.where(community[order], 0, 1).astype(np.int8),
    }


def _frame(lines: dict, n_customers: int, start_day: pd.Timestamp) -> pd.DataFrame:
    """The order log as pandas columns; strings are built as Arrow arrays and wrapped once."""
    n_orders = int(lines["order"][-1]) + 1 if lines["order"].size else 0
    customer_ids = _sequential_ids("c", n_customers, max(_ID_DIGITS_CUSTOMER, len(str(n_customers))))
    order_ids = _sequential_ids("o", n_orders, max(_ID_DIGITS_ORDER, len(str(n_orders))))
    category_names = list(REPLENISHMENT_CYCLE_DAYS) + list(OTHER_CATEGORIES)
    product_names = [f"{name}-{k:03d}" for name in category_names for k in range(_PRODUCTS_PER_CATEGORY)]
    product = pa.array(lines["product"])
    category = pa.array(lines["product"] // _PRODUCTS_PER_CATEGORY)
    start = start_day.to_datetime64().astype("datetime64[ns]")
    return pd.DataFrame(
        {
            "customer_id": _strings(_string_array(customer_ids[lines["customer"]])),
            "order_id": _strings(_string_array(order_ids[lines["order"]])),
            "order_ts": start + lines["second"].astype("timedelta64[s]"),
            "amount": lines["amount"],
            "quantity": lines["units"],
            "product_id": _strings(pa.array(product_names, pa.string()).take(product)),
            "category": _strings(pa.array(category_names, pa.string()).take(category)),
            "channel": _strings(pa.array(list(CHANNELS), pa.string()).take(pa.array(lines["channel"]))),
        },
        columns=COLUMNS,
    )


#: Non-product lines a messy export mixes among the products (Online Retail's codes).
FEE_PRODUCTS = {"POST": ("postage", 18.0), "DOT": ("postage", 45.0), "M": ("manual", 12.0), "BANK CHARGES": ("fees", 15.0)}


def make_messy(lines: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    """The same shop as an export from a real shop system, with the mess such exports have.

    Added on purpose, each at a known rate so that tests can check the loader's rules:

    * **Cancellation invoices.** 3% of orders are cancelled in full 1-14 days later by a
      credit invoice of their own (``order_id`` ``C`` + the order's id), every line negated
      (amount and quantity); 2% more lose one line that way. A fully cancelled order is not
      a purchase.
    * **Refund lines.** 1% of orders carry a negative line with the order's own id (a
      partial refund of its first line, 30-100% of it).
    * **Non-product lines.** Postage (``POST``, ``DOT``), manual adjustments (``M``) and bank
      charges on about 12% of orders, category ``postage``, ``manual`` or ``fees``.
    * **Exact duplicate rows.** 1% of lines appear twice.
    * **Wholesale outliers.** One order is 1,000 times the median order value; one new
      customer (``wholesale-01``) places an order on most days of the last year.
    * **Extra columns.** ``description``, ``country`` (one per customer) and ``unit_price``,
      which the order-log contract does not use; timestamps are cut to the minute, as
      exports print them.

    Returns a frame in the same columns plus the extra ones, in time order.
    """
    rng = np.random.default_rng(seed + 7919)
    lines = lines.copy()
    lines["order_ts"] = lines["order_ts"].dt.floor("min")
    orders = lines.drop_duplicates("order_id")[["order_id", "customer_id", "order_ts", "channel"]].reset_index(drop=True)
    n_orders = len(orders)
    parts = [lines]

    cancelled = orders.sample(frac=0.03, random_state=int(rng.integers(2**31)))
    later = pd.to_timedelta(rng.integers(1, 15, len(cancelled)), unit="D")
    credit = lines[lines["order_id"].isin(cancelled["order_id"])].merge(
        pd.DataFrame({"order_id": cancelled["order_id"].to_numpy(), "_later": later}), on="order_id"
    )
    one_line = orders[~orders["order_id"].isin(cancelled["order_id"])].sample(
        frac=0.02, random_state=int(rng.integers(2**31))
    )
    partial = lines[lines["order_id"].isin(one_line["order_id"])].drop_duplicates("order_id")
    partial = partial.assign(_later=pd.to_timedelta(rng.integers(1, 15, len(partial)), unit="D"))
    for frame in (credit, partial):
        parts.append(
            frame.assign(
                order_id="C" + frame["order_id"],
                order_ts=frame["order_ts"] + frame.pop("_later"),
                amount=-frame["amount"],
                quantity=-frame["quantity"],
            )
        )

    refunded = lines.drop_duplicates("order_id").sample(frac=0.01, random_state=int(rng.integers(2**31)))
    parts.append(refunded.assign(amount=-(refunded["amount"] * rng.uniform(0.3, 1.0, len(refunded))).round(2)))

    with_fee = orders.sample(frac=0.12, random_state=int(rng.integers(2**31)))
    codes = np.array(list(FEE_PRODUCTS))
    picked = codes[rng.choice(len(codes), len(with_fee), p=[0.6, 0.2, 0.1, 0.1])]
    parts.append(
        with_fee.assign(
            product_id=picked,
            category=[FEE_PRODUCTS[c][0] for c in picked],
            amount=np.round([FEE_PRODUCTS[c][1] * rng.uniform(0.6, 1.4) for c in picked], 2),
            quantity=1.0,
        )
    )

    parts.append(lines.sample(frac=0.01, random_state=int(rng.integers(2**31))))

    order_values = lines.groupby("order_id")["amount"].sum()
    giant = lines[lines["order_id"] == order_values.index[int(rng.integers(n_orders))]].head(1)
    parts.append(
        giant.assign(order_id="W" + giant["order_id"], amount=round(float(order_values.median()) * 1000, 2), quantity=500.0)
    )
    last_day = lines["order_ts"].max().normalize()
    days = pd.date_range(max(lines["order_ts"].min().normalize(), last_day - pd.Timedelta(days=364)), last_day, freq="D")
    days = days[rng.random(len(days)) < 0.8]
    parts.append(
        pd.DataFrame(
            {
                "customer_id": "wholesale-01",
                "order_id": [f"WH{k:05d}" for k in range(len(days))],
                "order_ts": days + pd.to_timedelta(rng.integers(8 * 60, 18 * 60, len(days)), unit="min"),
                "amount": np.round(rng.gamma(4.0, 150.0, len(days)), 2),
                "quantity": 24.0,
                "product_id": "snacks-000",
                "category": "snacks",
                "channel": "storefront",
            }
        )
    )

    messy = pd.concat(parts, ignore_index=True)
    messy = until(messy, last_day)  # the export ends with the log
    messy = messy.astype({c: "str" for c in ("customer_id", "order_id", "product_id", "category", "channel")})
    messy["description"] = messy["product_id"].str.replace("-", " ", regex=False).str.upper()
    # A customer's country is the same on every row, so repeated rows repeat it too.
    which, customers = pd.factorize(messy["customer_id"])
    messy["country"] = np.where(rng.random(len(customers)) < 0.9, "China", "Hong Kong")[which]
    messy["unit_price"] = (messy["amount"] / messy["quantity"].abs().clip(lower=1)).round(2)
    return messy.sort_values(["order_ts", "order_id"], kind="stable").reset_index(drop=True)
