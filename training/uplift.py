"""Uplift: how much contacting a customer changes P(an order within the window), learned from past contacts.

The contacts were randomised (a holdout); ``repurchase train --uplift --contacts FILE`` learns it.

The training frame (:func:`uplift_frame`)
-----------------------------------------
One row per contact of the contacts file (:mod:`features.contacts`): the customer's
point-in-time features as of the contact's date, built by
:func:`features.pipeline.build_features` on the orders with ``order_ts`` on or before
``contacted_at`` (and nothing later: each campaign date gets its own cut of the log), the
action, ``treated`` (1 = sent, 0 = held out) and the outcome over the window exactly as
``repurchase measure`` counts it (:func:`training.measure.window_outcomes`): ``bought``
= any order on the days ``contacted_at + 1`` to ``contacted_at + window_days``, and
``orders`` in that window. Only contacts whose window has ended by the training cutoff
can be learned from; a contact of a customer with no order on or before its date has no
features and is left out (counted).

Which features. Everything per customer that the pipeline computes, but not

* the RFM scores (``rfm_*``): they rank a customer within the population of one date, so
  they change with who else is in the frame; everything else is the customer's own, the
  same whether the log holds one customer (online) or all of them (batch);
* columns that are constant within every campaign date (the cutoff's month, days to the
  next sales day): with a handful of campaign dates they only tell the campaigns apart,
  the reason :class:`training.model.RepurchaseModel` leaves them out of its models too.

The action enters as one 0/1 column per action (``action=<name>``), so one model learns
all actions and what they share.

The learner (:class:`UpliftModel`): the treated outcome model and a persuaded share per action
----------------------------------------------------------------------------------------------
``mu1(x)`` = P(bought | x, sent) is learned on the treated contacts (LightGBM): about 90% of
the contacts, enough for a full outcome model. The held-out contacts are few (10% by
default): a few hundred per action cannot learn a second outcome model, or a correction to
the first that varies by customer, whose errors would then be the uplift. So what the
holdout group estimates is one number per action, the *persuaded share* ``theta``: a
contact turns that share of the customers who would not have ordered into customers who
do, ``1 - mu1(x) = (1 - theta) (1 - mu0(x))``, hence

    ``uplift(x) = mu1(x) - mu0(x) = theta / (1 - theta) * (1 - mu1(x))``.

``theta`` comes from the held-out contacts of the action by moments: their count of
non-buyers is what ``(1 - mu1(x)) / (1 - theta)`` predicts for them, shrunk towards the
share pooled over all actions by :data:`SHRINK_NON_BUYERS` pseudo non-buyers (an action
with few held-out contacts gets about the pooled share). A negative ``theta`` (the action
puts customers off) gives negative uplifts.

By the last order's channel. A contact may persuade more of the customers who last
ordered through one channel than through another (a reminder by e-mail to those who last
bought in the community more than to the storefront's). When the order log has a
``channel`` column, the frame carries :data:`LAST_CHANNEL`, the channel of each customer's
latest order *before* the contact's date (:func:`last_channels`; for scoring, before the
scoring date), and ``theta`` is estimated per (action, last channel) by the same moments
(:func:`channel_shares`), shrunk towards the action's ``theta`` by
:data:`SHRINK_CHANNEL_NON_BUYERS` pseudo non-buyers, so that a small cell gets about its
action's share. ``mu1`` does not read the last channel, so within a cell it can be off on
average; each cell's ``1 - mu1`` is first rescaled to what its treated contacts show
(:func:`cell_calibration`). A customer whose last channel is missing or was not learned
(and every customer of a log without ``channel``) gets the action's ``theta``: exactly the
one-share-per-action learner. The last channel is not a feature of ``mu1``: the order of
customers within an (action, channel) cell stays that of ``mu1``. The assumption is that, within an action, the
customers least likely to order anyway have the most to gain and the order of customers is
that of ``mu1``; the customer's features enter through ``mu1`` only.

Chosen over the T-learner whose holdout model is boosted from the treated one on the
log-odds scale (``holdout_model="boosted"``, shipped before), which in turn had been chosen
over a plain T-learner, the X-learner (Künzel, Sekhon, Bickel and Yu 2019, PNAS 116(10)),
an S-learner and a transformed-outcome regression. On simulated campaigns
(``features.campaigns``, 50,000 customers) the boosted correction's flexibility is spent
on the holdout's noise: a correction that varies by customer, on the log-odds or on this
scale, ranked worse by the simulation's true effects than one number per action. The
simulation's persuadable customers are drawn from those who would not have ordered, the
form assumed here, so the benchmark flatters it (``benchmarks/README.md``, "Uplift"); a
shop where contacts mostly bring forward orders that would have come anyway breaks it.

``uplift`` is a difference of probabilities: -1 to 1, 0.05 = contacting adds five
customers who order in the window per hundred contacted.

Evaluation (:func:`evaluate_uplift`)
------------------------------------
By time, never at random: the latest campaign dates that together hold at least
``eval_share`` (30%) of the contacts are held out (:func:`campaign_split`); the model
learns from the contacts whose windows ended on or before the first held-out date, so
nothing it learns from happened after the held-out contacts were made. On the held-out
contacts, three rankings: by the uplift model, by ``p_repurchase`` (from a model trained
at the first held-out date: what a campaign on that day would have ranked by), and at
random (the held-out set's overall treatment-holdout difference, the expectation of a
random ranking; its Qini coefficient is 0 by definition). For each: the Qini coefficient
and ``uplift_at_10`` / ``uplift_at_30`` (:func:`training.metrics.uplift_at_k`), and the
incremental buyers and orders at 30% (the uplift at 30% times the contacts in the top
30%).
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd

from features.common.errors import InputError
from features.contacts import TREATMENT
from features.pipeline import LABELS, build_features
from features.timecut import as_day, on_or_before, until
from training.boosting import Estimator, train_booster
from training.contract import UPLIFT, uplift_column
from training.measure import window_outcomes
from training.metrics import qini_auc, uplift_at_k

DEFAULT_WINDOW_DAYS = 30
EVAL_SHARE = 0.3
MIN_GROUP_CONTACTS = 30
SHRINK_NON_BUYERS = 30
# Seeds 0-2 of the simulated campaigns (two channels, thousands of held-out contacts per
# cell) were best without shrinking (k 0 / 10 / 30: true uplift@30% 11.8 / 11.6 / 11.6
# points); a few pseudo non-buyers cost nothing there and keep a shop's small cells (a rare
# channel, a small action) near their action's share.
SHRINK_CHANNEL_NON_BUYERS = 10
LAST_CHANNEL = "last_channel"
HOLDOUT_MODELS = ("persuaded_share", "boosted")
AT_K = (0.1, 0.3)
RFM_SCORE_COLUMNS = ("rfm_rank_r", "rfm_rank_f", "rfm_rank_m", "rfm_rank_sum", "rfm_rank_cell")
CONTACT_KEYS = ("customer_id", "action", "contacted_at", "group")
OUTCOMES = ("treated", "bought", "orders")
NOT_FEATURES = frozenset({*CONTACT_KEYS, *OUTCOMES, "holdout_share", LAST_CHANNEL, *LABELS, *RFM_SCORE_COLUMNS})
ACTION_PREFIX = "action="


class UpliftDataError(InputError):
    """Contacts that cannot train or evaluate an uplift model (too few, or too few campaigns)."""


# --------------------------------------------------------------------------- the frame


def usable_contacts(contacts: pd.DataFrame, learn_until: pd.Timestamp, window_days: int) -> pd.DataFrame:
    """The contacts whose window ``(contacted_at, contacted_at + window_days]`` has ended by ``learn_until``."""
    ends = contacts["contacted_at"] + pd.Timedelta(days=window_days)
    return contacts[(ends <= pd.Timestamp(learn_until).normalize()).to_numpy()]


def last_channels(orders: pd.DataFrame, day) -> pd.Series:
    """The channel of each customer's latest order before ``day`` (index ``customer_id`` as text).

    Strictly before: an order on ``day`` itself may answer a contact made that day (a
    contact has a date, not a time), so only orders up to the end of the day before count
    (:func:`features.timecut.until`), for a contact's date and for a scoring date alike
    (``target`` dates its contacts with the scores' ``as_of`` unless told otherwise). Orders
    at the same instant keep the log's order (the later row wins). Empty when the log has
    no ``channel`` column; a customer whose latest order has no channel gets NaN.
    """
    if "channel" not in orders.columns:
        return pd.Series(dtype=object, name=LAST_CHANNEL)
    past = until(orders[["customer_id", "order_ts", "channel"]], as_day(day) - dt.timedelta(days=1))
    latest = past.assign(customer_id=past["customer_id"].astype(str)).sort_values("order_ts", kind="mergesort")
    latest = latest.drop_duplicates("customer_id", keep="last")
    return pd.Series(latest["channel"].to_numpy(dtype=object), index=latest["customer_id"].to_numpy(), name=LAST_CHANNEL)


def with_last_channel(features: pd.DataFrame, orders: pd.DataFrame, day) -> pd.DataFrame:
    """``features`` (one row per ``customer_id``) with :data:`LAST_CHANNEL` before ``day``, when the
    log has a ``channel`` column; unchanged otherwise (see :func:`last_channels`)."""
    if "channel" not in orders.columns:
        return features
    channel = last_channels(orders, day)
    return features.assign(**{LAST_CHANNEL: features["customer_id"].astype(str).map(channel).to_numpy(dtype=object)})


def uplift_frame(
    orders: pd.DataFrame,
    contacts: pd.DataFrame,
    window_days: int = DEFAULT_WINDOW_DAYS,
    *,
    channel_values=None,
    category_values=None,
) -> pd.DataFrame:
    """One row per contact that has features: the features as of ``contacted_at``, the
    action, ``treated`` and the window's ``bought`` and ``orders`` (see the module docs).

    ``orders`` is one row per order (``customer_id``, ``order_ts``, ``amount``, optional
    columns); ``contacts`` as :func:`features.contacts.load_contacts` returns them. The
    mix values fix the ``share_channel_*`` / ``share_category_*`` columns (give the
    scoring model's, so that the columns match). Rows come sorted by ``contacted_at``,
    then in contact order; ``attrs["without_history"]`` counts the contacts left out
    because the customer had no order on or before the contact's date. A log with a
    ``channel`` column adds :data:`LAST_CHANNEL`, the channel of the customer's latest order
    before the contact's date (:func:`last_channels`; not a model feature: it picks
    the persuaded share, see :class:`UpliftModel`).
    """
    contacts = contacts[list(CONTACT_KEYS)].reset_index(drop=True)
    outcome = window_outcomes(contacts, orders, window_days)
    contacts = contacts.assign(
        treated=(contacts["group"] == TREATMENT).to_numpy(dtype=np.int8),
        bought=outcome["bought"].to_numpy(dtype=np.int8),
        orders=outcome["orders"].to_numpy(dtype=np.int64),
    )
    customer = orders["customer_id"].astype(str)
    parts = []
    for day, rows in contacts.groupby("contacted_at", sort=True):
        # Each campaign date sees its own cut of the log: the orders up to the end of its day.
        mine = customer.isin(set(rows["customer_id"])).to_numpy()
        past = orders[mine & on_or_before(orders["order_ts"], day).to_numpy()]
        features = build_features(past, day, channel_values=channel_values, category_values=category_values)
        features = with_last_channel(features.astype({"customer_id": "str"}), past, day)
        parts.append(rows.merge(features, on="customer_id", how="inner"))
    frame = pd.concat(parts, ignore_index=True)
    frame.attrs["without_history"] = int(len(contacts) - len(frame))
    return frame


def feature_columns(frame: pd.DataFrame) -> list[str]:
    """The uplift model's customer features: pipeline columns that vary within some campaign date."""
    candidates = [c for c in frame.columns if c not in NOT_FEATURES and not c.startswith(ACTION_PREFIX)]
    varies = frame.groupby("contacted_at")[candidates].nunique(dropna=False).max() > 1
    return [c for c in candidates if varies[c]]


def campaign_split(frame: pd.DataFrame, window_days: int, eval_share: float = EVAL_SHARE) -> tuple[np.ndarray, np.ndarray]:
    """Masks ``(learn, held_out)`` over the frame's rows, by time (see "Evaluation" in the module docs).

    Raises :class:`UpliftDataError` when there are fewer than two campaign dates, or when
    either side lacks :data:`MIN_GROUP_CONTACTS` treated or held-out contacts.
    """
    counts = frame.groupby("contacted_at").size().sort_index()
    if len(counts) < 2:
        raise UpliftDataError(
            f"the contacts come from {len(counts)} campaign date; evaluating an uplift model needs two or more "
            "(it learns from the earlier ones and is judged on the latest)"
        )
    from_latest = counts[::-1].cumsum()
    before = from_latest.shift(fill_value=0)
    held_dates = from_latest.index[(before < eval_share * len(frame)).to_numpy()]
    held_dates = held_dates[held_dates > counts.index[0]]  # the earliest date always stays to learn from
    first_held = held_dates.min()
    held_out = frame["contacted_at"].isin(set(held_dates)).to_numpy()
    learn = (frame["contacted_at"] + pd.Timedelta(days=window_days) <= first_held).to_numpy()
    for name, mask in (("learn from", learn), ("evaluate on", held_out)):
        treated = frame["treated"].to_numpy()[mask]
        n_treated, n_holdout = int(treated.sum()), int(len(treated) - treated.sum())
        if min(n_treated, n_holdout) < MIN_GROUP_CONTACTS:
            raise UpliftDataError(
                f"the contacts to {name} ({'windows ended by' if name == 'learn from' else 'from'} "
                f"{first_held.date()}) have {n_treated:,} treated and {n_holdout:,} held-out customers; "
                f"an uplift model needs {MIN_GROUP_CONTACTS} of each"
            )
    return learn, held_out


# --------------------------------------------------------------------------- the learner


def _sigmoid(log_odds: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-log_odds))


def persuaded_shares(actions: np.ndarray, no_order_if_sent: np.ndarray, no_order: np.ndarray) -> dict[str, float]:
    """``theta`` per action from held-out contacts (see the module docs): ``1 - sum(1 - mu1) /
    sum(not bought)``, both sums with :data:`SHRINK_NON_BUYERS` pseudo non-buyers at the pooled ratio.

    ``no_order_if_sent`` is each held-out contact's ``1 - mu1(x)``, ``no_order`` its ``1 - bought``.
    """
    # When every held-out contact ordered there is nobody left to persuade: the prior is theta 0.
    pooled = no_order_if_sent.sum() / no_order.sum() if no_order.sum() > 0 else 1.0
    out = {}
    for action in np.unique(actions):
        rows = actions == action
        ratio = (no_order_if_sent[rows].sum() + SHRINK_NON_BUYERS * pooled) / (no_order[rows].sum() + SHRINK_NON_BUYERS)
        out[str(action)] = float(1.0 - ratio)
    return out


def channel_shares(actions: np.ndarray, channels: np.ndarray, no_order_if_sent: np.ndarray, no_order: np.ndarray,
                   action_shares: dict[str, float], prior: float, calibration: dict | None = None) -> dict[str, dict[str, float]]:
    """``theta`` per action and last channel from held-out contacts, shrunk towards the action's.

    The same moments as :func:`persuaded_shares` within each (action, channel) cell, with
    ``prior`` pseudo non-buyers at the action's ratio ``1 - theta_action``: a cell with few
    held-out non-buyers gets about its action's share, a large one its own (an empirical
    Bayes prior of ``prior`` non-buyers). Contacts without a channel (NaN) form no cell.
    ``calibration`` (``{(action, channel): factor}``, :func:`cell_calibration`) rescales
    each cell's ``1 - mu1``. Returns ``{action: {channel: theta}}``.
    """
    out: dict[str, dict[str, float]] = {str(action): {} for action in np.unique(actions)}
    for action, channel, rows in _cells(actions, channels):
        prior_ratio = 1.0 - action_shares[action]
        factor = 1.0 if calibration is None else calibration.get((action, channel), 1.0)
        ratio = (factor * no_order_if_sent[rows].sum() + prior * prior_ratio) / (no_order[rows].sum() + prior)
        out[action][channel] = float(1.0 - ratio)
    return out


def _cells(actions: np.ndarray, channels: np.ndarray):
    """Each (action, channel) cell of contacts with a known channel: ``(action, channel, rows)``."""
    known = pd.notna(channels)
    text = channels.astype(str)
    for action in np.unique(actions):
        for channel in map(str, np.unique(text[known & (actions == action)])):
            yield str(action), channel, known & (actions == action) & (text == channel)


def cell_calibration(actions: np.ndarray, channels: np.ndarray, no_order_if_sent: np.ndarray,
                     no_order: np.ndarray) -> dict[tuple[str, str], float]:
    """Per (action, channel): the treated contacts' non-buyers over the count ``mu1`` predicts for them.

    ``mu1`` does not read the last channel, so within a channel it can be off on average
    (a contact persuades more of one channel: its treated customers order more than ``mu1``
    says), and the cell's moments would pull its share towards the action's. The treated
    contacts of the cell (nine in ten) measure that offset; the held-out ones' ``1 - mu1``
    is rescaled by it. ``no_order_if_sent`` and ``no_order`` are the *treated* contacts' ones.
    """
    out = {}
    for action, channel, rows in _cells(actions, channels):
        predicted = no_order_if_sent[rows].sum()
        if predicted > 0:
            out[(action, channel)] = float(no_order[rows].sum() / predicted)
    return out


class UpliftModel(Estimator):
    """The treated outcome model on LightGBM and a persuaded share per action from the holdout:
    the change in P(an order within the window) that an action causes (see the module docs).

    Parameters
    ----------
    window_days : int
        The window the outcome was counted over (kept with the model; it says what
        ``uplift`` means).
    learning_rate, num_leaves, min_child_samples, n_rounds
        LightGBM settings of the treated model (fixed rounds: a set to stop early on would
        be cut from the small holdout group, which the two models must share a scale with).
    holdout_model : {"persuaded_share", "boosted"}
        What the held-out contacts learn: one persuaded share per action (default), or a
        LightGBM correction to the treated model's log-odds boosted from them (the learner
        shipped before, kept to compare with).
    channel_prior : float or None
        With ``holdout_model="persuaded_share"`` and a frame with :data:`LAST_CHANNEL`: the
        pseudo non-buyers (at the action's share) each (action, last channel) share is
        shrunk with (:func:`channel_shares`); None: one share per action only.
    holdout_rounds, holdout_leaves, holdout_min_child_samples
        The boosted correction's settings: few shallow trees on many rows each.
    feature_fraction, bagging_fraction, bagging_freq, lambda_l2, max_bin
        LightGBM's column and row subsampling, L2 penalty and histogram bins (both models;
        the customer model's settings).
    num_threads : int or None
        LightGBM threads; None: the cores available to the process (results do not depend on it).
    random_state : int
        Seed for LightGBM.

    Attributes
    ----------
    features_ : list of str
        The customer features (see the module docs), then one column per action (``action=<name>``).
    actions_ : list of str
        The actions learned, sorted.
    n_contacts_, n_holdout_ : int
        Contacts learned from, and how many of them were held out.
    treated_model_ : lightgbm.Booster
        ``mu1``.
    persuaded_share_ : dict of str to float, or None
        ``theta`` per action (``holdout_model="persuaded_share"``).
    channel_share_ : dict of str to dict of str to float, or None
        ``theta`` per action and channel of the last order before the contact; None when
        the contacts' log had no ``channel`` (or ``channel_prior`` is None). A customer
        whose last channel is missing or was not learned gets the action's share.
    holdout_correction_ : lightgbm.Booster or None
        The holdout's log-odds minus the treated's (``holdout_model="boosted"``).
    """

    def __init__(
        self,
        *,
        window_days: int = DEFAULT_WINDOW_DAYS,
        learning_rate: float = 0.05,
        num_leaves: int = 7,
        min_child_samples: int = 50,
        n_rounds: int = 200,
        holdout_model: str = "persuaded_share",
        channel_prior: float | None = SHRINK_CHANNEL_NON_BUYERS,
        holdout_rounds: int = 50,
        holdout_leaves: int = 3,
        holdout_min_child_samples: int = 100,
        feature_fraction: float = 0.8,
        bagging_fraction: float = 0.8,
        bagging_freq: int = 1,
        lambda_l2: float = 1.0,
        max_bin: int = 63,
        num_threads: int | None = None,
        random_state: int = 0,
    ):
        self.window_days = window_days
        self.learning_rate = learning_rate
        self.num_leaves = num_leaves
        self.min_child_samples = min_child_samples
        self.n_rounds = n_rounds
        self.holdout_model = holdout_model
        self.channel_prior = channel_prior
        self.holdout_rounds = holdout_rounds
        self.holdout_leaves = holdout_leaves
        self.holdout_min_child_samples = holdout_min_child_samples
        self.feature_fraction = feature_fraction
        self.bagging_fraction = bagging_fraction
        self.bagging_freq = bagging_freq
        self.lambda_l2 = lambda_l2
        self.max_bin = max_bin
        self.num_threads = num_threads
        self.random_state = random_state

    def __setstate__(self, state: dict) -> None:
        # Models pickled before ``holdout_model`` existed all had the boosted correction, and
        # those pickled before ``channel_share_`` one share per action.
        super().__setstate__({"holdout_model": "boosted", "channel_share_": None, **state})

    def _params(self, num_leaves: int, min_child_samples: int) -> dict:
        return self._lgb_params("binary", num_leaves=num_leaves, min_child_samples=min_child_samples)

    def fit(self, frame: pd.DataFrame) -> "UpliftModel":
        """Learn from an :func:`uplift_frame` (all its rows; split beforehand to evaluate)."""
        if self.holdout_model not in HOLDOUT_MODELS:
            raise InputError(f"holdout_model must be one of {', '.join(HOLDOUT_MODELS)}, got '{self.holdout_model}'")
        treated = frame["treated"].to_numpy().astype(bool)
        n_treated, n_holdout = int(treated.sum()), int((~treated).sum())
        if min(n_treated, n_holdout) < MIN_GROUP_CONTACTS:
            raise UpliftDataError(
                f"{n_treated:,} treated and {n_holdout:,} held-out contacts to learn from; an uplift model "
                f"needs {MIN_GROUP_CONTACTS} of each"
            )
        self.actions_ = sorted(frame["action"].astype(str).unique())
        self.features_ = [*feature_columns(frame), *(ACTION_PREFIX + a for a in self.actions_)]
        self.n_contacts_, self.n_holdout_ = int(len(frame)), n_holdout
        actions = frame["action"].astype(str).to_numpy()
        X = self._matrix(frame, actions)
        y = frame["bought"].to_numpy(dtype=float)
        self.treated_model_ = train_booster(self._params(self.num_leaves, self.min_child_samples),
                                            (X[treated], y[treated]), max_rounds=self.n_rounds)
        start = self.treated_model_.predict(X[~treated], raw_score=True)
        self.persuaded_share_, self.holdout_correction_, self.channel_share_ = None, None, None
        if self.holdout_model == "persuaded_share":
            no_order_if_sent, no_order = 1.0 - _sigmoid(start), 1.0 - y[~treated]
            self.persuaded_share_ = persuaded_shares(actions[~treated], no_order_if_sent, no_order)
            if self.channel_prior is not None and LAST_CHANNEL in frame.columns:
                channels = frame[LAST_CHANNEL].to_numpy(dtype=object)
                fitted = 1.0 - _sigmoid(self.treated_model_.predict(X[treated], raw_score=True))
                calibration = cell_calibration(actions[treated], channels[treated], fitted, 1.0 - y[treated])
                self.channel_share_ = channel_shares(actions[~treated], channels[~treated], no_order_if_sent, no_order,
                                                     self.persuaded_share_, self.channel_prior, calibration)
        else:
            self.holdout_correction_ = train_booster(
                self._params(self.holdout_leaves, self.holdout_min_child_samples),
                (X[~treated], y[~treated], start), max_rounds=self.holdout_rounds,
            )
        return self

    def _matrix(self, features, actions) -> np.ndarray:
        """Customer features (a frame, or a mapping of arrays) and the one-hot actions, as float32."""
        customer = [c for c in self.features_ if not c.startswith(ACTION_PREFIX)]
        missing = [c for c in customer if c not in features]
        if missing:
            raise InputError(f"feature frame lacks columns the uplift model was trained on: {', '.join(missing[:5])}")
        n = len(actions)
        X = np.empty((n, len(self.features_)), dtype=np.float32)
        for k, name in enumerate(customer):
            X[:, k] = np.asarray(features[name], dtype=float)
        for k, action in enumerate(self.actions_, start=len(customer)):
            X[:, k] = actions == action
        return X

    def uplift(self, features, action: str) -> np.ndarray:
        """The change in P(an order within the window) if each customer is contacted with ``action``."""
        if action not in self.actions_:
            raise InputError(f"the uplift model has not learned '{action}'; it knows {', '.join(self.actions_)}")
        X = self._matrix(features, np.full(len(features), action, dtype=object))
        treated = self.treated_model_.predict(X, raw_score=True)
        if self.holdout_model == "persuaded_share":
            theta = self._theta(features, action)
            return theta / (1.0 - theta) * (1.0 - _sigmoid(treated))
        holdout = treated + self.holdout_correction_.predict(X, raw_score=True)
        return _sigmoid(treated) - _sigmoid(holdout)

    def _theta(self, features, action: str):
        """The persuaded share of each row: its (action, last channel) share, else the action's."""
        theta = self.persuaded_share_[action]
        if not self.channel_share_ or LAST_CHANNEL not in features:
            return theta
        cells = self.channel_share_.get(action, {})
        channels = pd.Series(np.asarray(features[LAST_CHANNEL], dtype=object))
        known = channels.notna().to_numpy()
        return np.where(known, channels.astype(str).map(cells).fillna(theta).to_numpy(dtype=float), theta)

    def columns(self) -> list[str]:
        """The score columns it adds: ``uplift``, then ``uplift_<action>`` per action learned."""
        return [UPLIFT, *(uplift_column(a) for a in self.actions_)]

    def score_columns(self, features) -> dict[str, np.ndarray]:
        """``uplift_<action>`` for every action learned, and ``uplift``: the largest of them."""
        per_action = {uplift_column(a): self.uplift(features, a) for a in self.actions_}
        return {UPLIFT: np.max(np.column_stack(list(per_action.values())), axis=1), **per_action}


# --------------------------------------------------------------------------- evaluation


def contact_uplift(model: UpliftModel, frame: pd.DataFrame) -> np.ndarray:
    """Each contact's predicted uplift for its own action (every action must be one the model learned)."""
    out = np.full(len(frame), np.nan)
    actions = frame["action"].astype(str).to_numpy()
    for action in np.unique(actions):
        rows = actions == action
        out[rows] = model.uplift(frame[rows], action)
    return out


def ranking_metrics(outcome: pd.DataFrame, score: np.ndarray) -> dict:
    """Qini coefficient, ``uplift_at_10`` and ``uplift_at_30`` of one ranking of held-out contacts,
    and the incremental buyers and orders at 30% (see the module docs)."""
    treated, bought, orders = (outcome[c].to_numpy() for c in OUTCOMES)
    out: dict = {"qini_auc": qini_auc(bought, treated, score)}
    for k in AT_K:
        out[f"uplift_at_{round(100 * k)}"] = uplift_at_k(bought, treated, score, k)
    n_top = max(1, int(round(0.3 * len(score))))
    at_30, orders_at_30 = out["uplift_at_30"], uplift_at_k(orders, treated, score, 0.3)
    out["contacts_at_30"] = n_top
    out["incremental_buyers_at_30"] = None if at_30 is None else at_30 * n_top
    out["incremental_orders_at_30"] = None if orders_at_30 is None else orders_at_30 * n_top
    return out


def random_ranking_metrics(outcome: pd.DataFrame) -> dict:
    """What a random ranking gets in expectation: the overall difference at every k, Qini 0."""
    treated = outcome["treated"].to_numpy().astype(bool)
    diff = {c: float(outcome[c].to_numpy(dtype=float)[treated].mean() - outcome[c].to_numpy(dtype=float)[~treated].mean())
            for c in ("bought", "orders")}
    n_top = max(1, int(round(0.3 * len(outcome))))
    return {"qini_auc": 0.0, **{f"uplift_at_{round(100 * k)}": diff["bought"] for k in AT_K},
            "contacts_at_30": n_top, "incremental_buyers_at_30": diff["bought"] * n_top,
            "incremental_orders_at_30": diff["orders"] * n_top}


def evaluate_uplift(held_out: pd.DataFrame, uplift: np.ndarray, p_repurchase: np.ndarray | None) -> dict:
    """The three rankings of the held-out contacts (see "Evaluation" in the module docs), and
    ``ratio_at_30``: the uplift ranking's ``uplift_at_30`` over ``p_repurchase``'s (None when
    the latter is not positive: a ratio to nothing or to a loss means nothing)."""
    rankings = {"uplift": ranking_metrics(held_out, uplift)}
    if p_repurchase is not None:
        rankings["p_repurchase"] = ranking_metrics(held_out, p_repurchase)
    rankings["random"] = random_ranking_metrics(held_out)
    ours = rankings["uplift"]["uplift_at_30"]
    theirs = rankings.get("p_repurchase", {}).get("uplift_at_30")
    ratio = ours / theirs if ours is not None and theirs is not None and theirs > 0 else None
    return {"rankings": rankings, "ratio_at_30": ratio}


def describe(frame: pd.DataFrame) -> dict:
    """Contacts, held-out customers and campaign dates of a frame, for reports."""
    dates = frame["contacted_at"]
    return {
        "contacts": int(len(frame)),
        "holdout": int((frame["treated"] == 0).sum()),
        "campaigns": int(dates.nunique()),
        "first": None if frame.empty else dates.min().date().isoformat(),
        "last": None if frame.empty else dates.max().date().isoformat(),
    }
