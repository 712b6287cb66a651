"""Did the campaign work? Treatment against holdout over the window after each contact.

``repurchase measure`` (``DESIGN.md``, "Campaigns") counts, for every contact in the
contacts file, the customer's orders on the days ``contacted_at + 1`` to ``contacted_at +
window_days`` (the contact day itself is left out: the time of the send is not known, so an
order that day may have come first). Every contact is a unit: a contacted customer with no
order in the window is a non-buyer, never dropped (the contacts are the left side of the
join), and a customer contacted in two campaigns counts once per contact.

Per action and overall (all contacts pooled), for each group: ``customers``, ``buyers``
(at least one order in the window), ``rate`` = buyers / customers, ``orders_per_customer``
and ``revenue_per_customer``. Then, treatment against holdout:

``rate_diff``, ``rate_diff_ci95``
    the difference of the rates and its 95% interval: Newcombe's hybrid score interval
    (statsmodels ``confint_proportions_2indep(method="newcomb")``; Newcombe 1998, method
    10), which keeps its coverage with small groups and rates near 0 or 1, where the Wald
    interval does not.
``p_value``
    two-sided, the score test of equal rates (Miettinen & Nurminen 1985; statsmodels
    ``test_proportions_2indep(method="score")``); 1.0 when both groups have the same rate
    of 0 or 1 (no evidence of a difference).
``rel_lift``
    ``rate_diff`` / holdout rate (None when the holdout rate is 0).
``incremental_orders``, ``incremental_revenue`` (and their ``_ci95``)
    the per-customer difference between the groups times the treatment group's size: what
    contacting the treatment group added. Intervals from Welch's t test (scipy
    ``ttest_ind(equal_var=False)``).
``contact_cost_total``, ``roi``
    ``contact_cost`` x treatment customers; ROI = (incremental revenue - cost) / cost, on
    revenue, not margin (None when the cost is 0).
``mde``
    the smallest rate difference (above the holdout rate) these group sizes detect with 80%
    power in a two-sided 5% test: Cohen's effect size h from statsmodels
    ``NormalIndPower().solve_power``, turned into a rate with the inverse of
    ``proportion_effectsize`` at the holdout rate.
``srm``
    sample-ratio mismatch: a chi-square test (scipy ``chisquare``) of the group sizes against
    the planned holdout share (the contacts' ``holdout_share`` column, else
    ``holdout_share``); ``mismatch`` when p < 0.001, the usual threshold, since with large
    groups tiny imbalances are expected to be flagged only when real.
``verdict``, ``summary``
    ``significant`` (p < 0.05, either direction), ``not_significant``, or ``too_small``
    (a group has fewer than :data:`MIN_GROUP` customers, or nobody in either group bought):
    and one plain sentence saying so.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd

from features.contacts import HOLDOUT, HOLDOUT_SHARE, TREATMENT, ContactsError
from features.timecut import in_horizon
from training.i18n import Language, language

ALPHA = 0.05
POWER = 0.8
SRM_ALPHA = 0.001
MIN_GROUP = 30
DEFAULT_WINDOW_DAYS = 30
DEFAULT_CONTACT_COST = 0.5
GROUP_KEYS = ("customers", "buyers", "rate", "orders_per_customer", "revenue_per_customer")


# --------------------------------------------------------------------------- checks


def check_contact_windows(contacts: pd.DataFrame, first_day: pd.Timestamp, last_day: pd.Timestamp, window_days: int,
                          origin: str = "contacts") -> None:
    """Every contact's window must lie inside the order log; one line naming the first contact that does not.

    ``contacts`` is :func:`features.contacts.load_contacts` output (rows in file order;
    ``attrs`` may carry ``row_base`` and ``row_word`` for messages).
    """
    row_base = contacts.attrs.get("row_base", 1)
    row_word = contacts.attrs.get("row_word", "row")
    day = lambda ts: ts.date().isoformat()  # noqa: E731
    dates = contacts["contacted_at"]

    def fail(mask: np.ndarray, message) -> None:
        positions = np.flatnonzero(mask)
        if positions.size:
            more = f" (and {positions.size - 1} more)" if positions.size > 1 else ""
            raise ContactsError(f"{origin}: {row_word} {positions[0] + row_base}{more}: contacted_at "
                                f"{message(dates.iloc[positions[0]])}")

    fail((dates > last_day).to_numpy(), lambda d: f"{day(d)} is after the orders end ({day(last_day)}); "
         "give the order log that covers the campaign")
    latest = last_day - pd.Timedelta(days=window_days)
    fail((dates > latest).to_numpy(), lambda d: (
        f"{day(d)}: its {window_days}-day window ends {day(d + pd.Timedelta(days=window_days))}, after the orders "
        f"end ({day(last_day)}); measure when the window is over, or use --window-days "
        f"{max((last_day - d).days, 1)}" if (last_day - d).days >= 1 else
        f"{day(d)} is the last day of the orders; measure when its window is over"))
    fail((dates < first_day).to_numpy(), lambda d: f"{day(d)} is before the orders begin ({day(first_day)}); "
         "give the order log that covers the campaign")


# --------------------------------------------------------------------------- counting


def window_outcomes(contacts: pd.DataFrame, orders: pd.DataFrame, window_days: int) -> pd.DataFrame:
    """One row per contact, in contact order: its ``orders``, ``revenue`` and ``bought`` in the window.

    ``orders`` has one row per order (``customer_id``, ``order_ts``, ``amount``). Contacts
    are the left side: a contact with no order in its window has 0 orders and is kept.
    """
    units = contacts[["customer_id", "action", "contacted_at", "group"]].reset_index(drop=True)
    keyed = units[["customer_id", "contacted_at"]].assign(customer_id=units["customer_id"].astype(str))
    mine = orders[orders["customer_id"].astype(str).isin(set(keyed["customer_id"]))]
    pairs = keyed.reset_index(names="unit").merge(
        pd.DataFrame({"customer_id": mine["customer_id"].astype(str).to_numpy(),
                      "day": pd.to_datetime(mine["order_ts"]).dt.normalize().to_numpy(),
                      "amount": mine["amount"].to_numpy(dtype=float)}),
        on="customer_id", how="inner",
    )
    window = pairs[in_horizon(pairs["day"], pairs["contacted_at"], window_days).to_numpy()].groupby("unit").agg(
        orders=("amount", "size"), revenue=("amount", "sum"))
    n_orders = window["orders"].reindex(units.index, fill_value=0).to_numpy(dtype=np.int64)
    return units.assign(
        orders=n_orders,
        revenue=window["revenue"].reindex(units.index, fill_value=0.0).to_numpy(dtype=float),
        bought=n_orders > 0,
    )


# --------------------------------------------------------------------------- statistics


def _finite(value) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _group(rows: pd.DataFrame) -> dict:
    n = len(rows)
    buyers = int(rows["bought"].sum())
    return {
        "customers": n,
        "buyers": buyers,
        "rate": buyers / n if n else None,
        "orders_per_customer": float(rows["orders"].sum()) / n if n else None,
        "revenue_per_customer": float(rows["revenue"].sum()) / n if n else None,
    }


def rate_difference(buyers_t: int, n_t: int, buyers_h: int, n_h: int) -> tuple[float, tuple[float, float], float]:
    """(difference of rates, its 95% Newcombe interval, score-test p-value) of treatment minus holdout."""
    from statsmodels.stats.proportion import confint_proportions_2indep, test_proportions_2indep

    diff = buyers_t / n_t - buyers_h / n_h
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        low, high = confint_proportions_2indep(buyers_t, n_t, buyers_h, n_h, method="newcomb", compare="diff",
                                               alpha=ALPHA)
        p_value = test_proportions_2indep(buyers_t, n_t, buyers_h, n_h, method="score", compare="diff").pvalue
    if not math.isfinite(p_value):  # both rates 0 or both 1: the score statistic is 0/0, and no difference is seen
        p_value = 1.0
    return diff, (float(low), float(high)), float(p_value)


def minimum_detectable_effect(n_t: int, n_h: int, baseline: float) -> float | None:
    """The smallest rate increase over ``baseline`` that groups of these sizes detect with 80% power (5%, two-sided)."""
    from statsmodels.stats.power import NormalIndPower

    if n_t < 2 or n_h < 2:
        return None
    h = NormalIndPower().solve_power(effect_size=None, nobs1=n_t, ratio=n_h / n_t, alpha=ALPHA, power=POWER,
                                     alternative="two-sided")
    # proportion_effectsize(p1, p0) = 2 asin(sqrt(p1)) - 2 asin(sqrt(p0)), solved for p1 (upwards where the
    # rate can still rise by h, else downwards).
    phi = math.asin(math.sqrt(min(max(baseline, 0.0), 1.0)))
    if phi + h / 2 <= math.pi / 2:
        return math.sin(phi + h / 2) ** 2 - baseline
    if phi - h / 2 >= 0:
        return baseline - math.sin(phi - h / 2) ** 2
    return None


def sample_ratio(n_t: int, n_h: int, planned_holdout: float) -> dict:
    """Chi-square test of the group sizes against the planned holdout share (expected counts may be fractional)."""
    from scipy.stats import chisquare

    n = n_t + n_h
    out = {"planned_holdout_share": planned_holdout, "observed_holdout_share": n_h / n if n else None,
           "p_value": None, "mismatch": False}
    if n == 0 or not 0 < planned_holdout < 1:
        return out
    p_value = float(chisquare([n_t, n_h], f_exp=[n * (1 - planned_holdout), n * planned_holdout]).pvalue)
    out.update(p_value=p_value, mismatch=bool(p_value < SRM_ALPHA))
    return out


def _welch_interval(treated: np.ndarray, held: np.ndarray) -> tuple[float, float] | None:
    from scipy.stats import ttest_ind

    if len(treated) < 2 or len(held) < 2 or (np.ptp(treated) == 0 and np.ptp(held) == 0):
        return None
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        interval = ttest_ind(treated, held, equal_var=False).confidence_interval(confidence_level=1 - ALPHA)
    low, high = float(interval.low), float(interval.high)
    return (low, high) if math.isfinite(low) and math.isfinite(high) else None


def compare(rows: pd.DataFrame, *, contact_cost: float, planned_holdout: float) -> dict:
    """The block of one action (or of all contacts): both groups and treatment against holdout (see module docs)."""
    treated, held = rows[rows["group"] == TREATMENT], rows[rows["group"] == HOLDOUT]
    block = {"treatment": _group(treated), "holdout": _group(held)}
    n_t, n_h = len(treated), len(held)
    b_t, b_h = block["treatment"]["buyers"], block["holdout"]["buyers"]
    cost = contact_cost * n_t
    block.update(rate_diff=None, rate_diff_ci95=None, rel_lift=None, p_value=None, incremental_orders=None,
                 incremental_orders_ci95=None, incremental_revenue=None, incremental_revenue_ci95=None,
                 contact_cost_total=cost, roi=None, mde=None)
    if n_t and n_h:
        diff, (low, high), p_value = rate_difference(b_t, n_t, b_h, n_h)
        rate_h = block["holdout"]["rate"]
        orders_diff = block["treatment"]["orders_per_customer"] - block["holdout"]["orders_per_customer"]
        revenue_diff = block["treatment"]["revenue_per_customer"] - block["holdout"]["revenue_per_customer"]
        orders_ci = _welch_interval(treated["orders"].to_numpy(float), held["orders"].to_numpy(float))
        revenue_ci = _welch_interval(treated["revenue"].to_numpy(float), held["revenue"].to_numpy(float))
        block.update(
            rate_diff=diff,
            rate_diff_ci95=[low, high],
            rel_lift=diff / rate_h if rate_h else None,
            p_value=p_value,
            incremental_orders=orders_diff * n_t,
            incremental_orders_ci95=[orders_ci[0] * n_t, orders_ci[1] * n_t] if orders_ci else None,
            incremental_revenue=revenue_diff * n_t,
            incremental_revenue_ci95=[revenue_ci[0] * n_t, revenue_ci[1] * n_t] if revenue_ci else None,
            roi=(revenue_diff * n_t - cost) / cost if cost > 0 else None,
            mde=minimum_detectable_effect(n_t, n_h, rate_h),
        )
    block["srm"] = sample_ratio(n_t, n_h, planned_holdout)
    block["verdict"], block["summary"] = _verdict(block)
    return block


def _verdict(block: dict) -> tuple[str, str]:
    return verdict_of(block), verdict_summary(block)


def verdict_of(block: dict) -> str:
    """``significant``, ``not_significant`` or ``too_small`` (see the module docs)."""
    if min(block["treatment"]["customers"], block["holdout"]["customers"]) < MIN_GROUP:
        return "too_small"
    if block["treatment"]["buyers"] == 0 and block["holdout"]["buyers"] == 0:
        return "too_small"
    return "significant" if block["p_value"] < ALPHA else "not_significant"


def verdict_summary(block: dict, lang: Language | str | None = "en") -> str:
    """The verdict of one block (:func:`compare`) as one plain sentence in ``lang`` (English by default).

    The JSON keeps the English sentence (``summary``); the CLI and the page say it in the reader's language.
    """
    lang = language(lang)
    _ = lang.gettext
    n_t, n_h = block["treatment"]["customers"], block["holdout"]["customers"]
    mde = block["mde"]
    reach = (_("; groups this size detect only differences of {mde} points or more").format(
        mde=lang.decimal(100 * mde, 1)) if mde is not None else "")
    srm = block["srm"]
    warning = ""
    if srm["mismatch"]:
        warning = " " + _("Warning: the holdout is {observed} of the contacts, not the planned {planned} (sample-ratio "
                          "test p = {p}): check how the groups were kept before trusting the result.").format(
            observed=lang.percent(srm["observed_holdout_share"]), planned=lang.percent(srm["planned_holdout_share"], 0),
            p=f"{srm['p_value']:.2g}")
    verdict = verdict_of(block)
    if verdict == "too_small" and min(n_t, n_h) < MIN_GROUP:
        return _("Too few customers to tell: {treatment} in treatment and {holdout} in the holdout (at least {minimum} "
                 "in each are needed){reach}.").format(treatment=lang.count(n_t), holdout=lang.count(n_h),
                                                      minimum=MIN_GROUP, reach=reach) + warning
    if verdict == "too_small":
        return _("Too little to tell: nobody in either group ordered in the window; a longer window or more customers "
                 "may show something.") + warning
    low, high = block["rate_diff_ci95"]
    numbers = _("{diff} points in the repurchase rate (95% interval {low} to {high}, p = {p})").format(
        diff=lang.signed(100 * block["rate_diff"], 1), low=lang.signed(100 * low, 1), high=lang.signed(100 * high, 1),
        p=f"{block['p_value']:.2g}")
    if verdict == "significant" and block["rate_diff"] > 0:
        return _("It worked: {numbers}, about {orders} orders and {revenue} in revenue that would not have come without "
                 "the contact.").format(numbers=numbers, orders=lang.count(block["incremental_orders"]),
                                        revenue=lang.count(block["incremental_revenue"])) + warning
    if verdict == "significant":
        return _("It backfired: {numbers}; contacted customers ordered less than the holdout.").format(
            numbers=numbers) + warning
    return _("Not significant: {numbers} could be chance{reach}.").format(numbers=numbers, reach=reach) + warning


# --------------------------------------------------------------------------- the whole measurement


def measure_campaigns(
    contacts: pd.DataFrame,
    orders: pd.DataFrame,
    *,
    window_days: int = DEFAULT_WINDOW_DAYS,
    contact_cost: float = DEFAULT_CONTACT_COST,
    holdout_share: float = 0.1,
) -> dict:
    """Treatment against holdout per action and overall (the ``measure --json`` document).

    Parameters
    ----------
    contacts
        :func:`features.contacts.load_contacts` output.
    orders
        One row per order (``customer_id``, ``order_ts``, ``amount``), e.g. ``OrderLog.orders``.
    window_days
        Orders on days ``contacted_at + 1`` to ``contacted_at + window_days`` count.
    contact_cost
        Cost of one contact, for ROI.
    holdout_share
        The planned holdout share of actions whose contacts do not say (``holdout_share`` column).
    """
    outcomes = window_outcomes(contacts, orders, window_days)
    planned = contacts.groupby("action")[HOLDOUT_SHARE].first() if HOLDOUT_SHARE in contacts else pd.Series(dtype=float)
    shares = {action: float(planned.get(action)) if pd.notna(planned.get(action, np.nan)) else holdout_share
              for action in outcomes["action"].unique()}
    actions = {}
    for action, rows in outcomes.groupby("action", sort=True):
        actions[str(action)] = compare(rows, contact_cost=contact_cost, planned_holdout=shares[action])
    expected_holdout = sum(shares[a] * n for a, n in outcomes["action"].value_counts().items()) / max(len(outcomes), 1)
    overall = compare(outcomes, contact_cost=contact_cost, planned_holdout=expected_holdout)
    known = set(orders["customer_id"].astype(str))
    never_ordered = int((~outcomes["customer_id"].astype(str).isin(known)).sum())
    return _plain({
        "window_days": int(window_days),
        "contact_cost": float(contact_cost),
        "contacts": int(len(outcomes)),
        "contacts_without_any_order": never_ordered,
        "first_contact": contacts["contacted_at"].min().date().isoformat(),
        "last_contact": contacts["contacted_at"].max().date().isoformat(),
        "actions": actions,
        "overall": overall,
    })


def _plain(value):
    """JSON-ready: numpy numbers as Python numbers, NaN and infinities as None."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return _finite(value)
    return value


def flat_metrics(result: dict) -> dict[str, float]:
    """The measurement as MLflow metrics: ``win_back.rate_diff``, ``overall.p_value``, ``win_back.treatment.rate``, ..."""
    out: dict[str, float] = {}
    keys = ("rate_diff", "rel_lift", "p_value", "incremental_orders", "incremental_revenue", "roi", "mde")
    blocks = {**{f"action.{a}": b for a, b in result["actions"].items()}, "overall": result["overall"]}
    for name, block in blocks.items():
        for key in keys:
            if block.get(key) is not None:
                out[f"{name}.{key}"] = float(block[key])
        for group in ("treatment", "holdout"):
            for key in GROUP_KEYS:
                if block[group].get(key) is not None:
                    out[f"{name}.{group}.{key}"] = float(block[group][key])
        if block["srm"]["p_value"] is not None:
            out[f"{name}.srm_p_value"] = float(block["srm"]["p_value"])
        if block["rate_diff_ci95"] is not None:
            out[f"{name}.rate_diff_ci95_low"], out[f"{name}.rate_diff_ci95_high"] = map(float, block["rate_diff_ci95"])
    return out


def log_measurement(result: dict, json_path, report_path, *, orders_source: str, contacts_source: str) -> str:
    """Log a measurement to MLflow (parameters, the numbers as metrics, the JSON and the page); returns the run id."""
    import mlflow

    from training.registry import tracked_run

    with tracked_run(f"measure {contacts_source}") as run:
        mlflow.log_params({"job": "measure", "orders": orders_source, "contacts": contacts_source,
                           "window_days": result["window_days"], "contact_cost": result["contact_cost"],
                           "actions": ",".join(result["actions"])})
        mlflow.log_metrics(flat_metrics(result))
        mlflow.set_tags({f"verdict.{name}": block["verdict"] for name, block in
                         [*result["actions"].items(), ("overall", result["overall"])]})
        mlflow.log_artifact(str(json_path))
        mlflow.log_artifact(str(report_path))
        return run.info.run_id
