"""Online scoring without the web server: request models, limits, scoring, JSON rows.

The BentoML service (:mod:`serving.service`) is a thin shell over these functions, so
they can be tested and fuzzed in-process, and ``repurchase serve``
(:func:`serving.launch.serve_command`) starts BentoML's own server on them.

Requests (``POST /score`` and ``POST /target``)
-----------------------------------------------
Exactly one of

* ``{"customer_ids": ["c1", ...]}``: customers looked up in the feature snapshot
  (``REPURCHASE_SNAPSHOT``, the ``<scores>.features.parquet`` written by batch scoring);
  they are scored as of the snapshot's ``as_of``. Ids missing from the snapshot come back
  in ``unknown_ids``. An ``as_of`` other than the snapshot's is refused.
* ``{"customers": [{"customer_id": "c1", "orders": [{"order_ts": "2024-05-01",
  "amount": 9.5}, ...]}], "as_of": "2024-06-30"}``: scored from the history sent, with
  the same feature code as batch scoring. Orders take the order-log contract's optional
  fields too (``order_id``, ``quantity``, ``product_id``, ``category``, ``channel``).
  ``as_of`` is optional and defaults to **today** (the server's date): a history is
  scored "as of now", so a customer whose last order is old is treated as lapsed.
  Defaulting to the latest order in the request would make every customer look freshly
  active. Send ``as_of`` to score a past date.

Refused with a 4xx answer and a one-line message (``{"error": "..."}``), never a 500:
malformed JSON, unknown keys, wrong types, both or neither of ``customer_ids`` and
``customers``, empty lists, the same customer twice in ``customers``, unparseable dates
(``order_ts``: ``YYYY-MM-DD`` or ISO 8601; ``as_of``: ``YYYY-MM-DD``), ``as_of`` after
today, orders after ``as_of`` (or after today), non-finite numbers, and negative amounts:
**returns are not accepted online** (a return cannot be matched to its order here; send
each order's net value, 0 or more). Status codes: 400 for a bad request, 413 above the
limits (:data:`MAX_CUSTOMERS` customers or ids, :data:`MAX_ORDERS` orders,
:data:`MAX_BODY_BYTES` bytes per request), 409 for ids when the service has no snapshot.
Over HTTP, :mod:`serving.guard` adds 401 (API key), 408 (body too slow), 413 (body
refused while it is read), 415 (form or multipart body) and 429 (too many at once).

Answers
-------
``{"scores": [row, ...], "unknown_ids": [...], "model_version": "..."}``; a row is the
score contract (:data:`training.contract.SCORE_COLUMNS`) with dates as ``YYYY-MM-DD``
and missing values (NaN) as ``null``; a model trained with ``--uplift`` adds ``uplift`` (the
largest change in P(an order within the window) that a learned action causes) and
``uplift_<action>`` per learned action, and a model without one has neither key. ``/target`` rows add ``action``, ``reason``,
``rule`` and ``group`` (``treatment`` or ``holdout``: the action's random holdout, drawn as
``repurchase target`` draws it with the request's as-of date as the campaign date; all
four ``null`` when no rule fires); there ``uplift`` is that of the action chosen. With ``"explain": true`` in the request, every
row adds ``reason_codes``: the three features that moved the customer's ``p_repurchase``
most, as ``name=value (+log-odds)`` (:meth:`training.model.RepurchaseModel.reason_codes`).
Rows come in request order, one per distinct customer (an id asked for twice is answered
once). The member-tier columns (``member_tier``, ``predicted_tier``, ``p_upgrade``,
``p_downgrade``, ``spend_to_next_tier``) follow the tiers the service was started with
(``repurchase serve --tiers FILE``, ``REPURCHASE_TIERS``), else the shipped tiers.
"""

from __future__ import annotations

import math
import os
import re
from datetime import date, datetime
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import pandas as pd
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from features.common.errors import InputError
from features.orders import parse_date
from features.timecut import day_end
from training.contract import SCORE_COLUMNS, uplift_columns

MAX_CUSTOMERS = 1_000
MAX_ORDERS = 100_000
MAX_BODY_BYTES = 20_000_000
MAX_TEXT = 200
RULE_COLUMNS = ("action", "reason", "rule", "group")
DEFAULT_MODEL_URI = "models:/repurchase@champion"
_TOO_BIG = "too_big"
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


class RequestError(InputError):
    """A request the service cannot answer as it is; ``status`` is the HTTP status (4xx)."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


# --------------------------------------------------------------------------- request models


def _id_text(value: Any) -> Any:
    """Ids may come as JSON integers (CDNOW's are numbers); booleans are not ids."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value


Id = Annotated[
    str,
    BeforeValidator(_id_text),
    StringConstraints(strict=True, strip_whitespace=True, min_length=1, max_length=MAX_TEXT),
]
Text = Annotated[str, StringConstraints(strict=True, strip_whitespace=True, max_length=MAX_TEXT)]
Number = Annotated[float, Field(strict=True, allow_inf_nan=False)]


def parse_order_ts(value: str) -> datetime:
    """``YYYY-MM-DD`` or an ISO 8601 timestamp; a zone is dropped (the local wall-clock time counts)."""
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        raise PydanticCustomError("date", "'{value}' is not a date; use YYYY-MM-DD or ISO 8601", {"value": value[:40]}) from None
    if not 1900 <= parsed.year <= 2200:
        raise PydanticCustomError("date", "'{value}' is out of range (years 1900-2200)", {"value": value[:40]})
    return parsed.replace(tzinfo=None)


def parse_day(value: str) -> date:
    """A calendar date written ``YYYY-MM-DD``, read by the one date parser :func:`features.orders.parse_date`."""
    text = value.strip()
    try:
        day = parse_date(text, "as_of", any_year=True) if _DATE.match(text) else None
    except InputError:
        day = None
    if day is None:
        raise PydanticCustomError("date", "'{value}' is not a date; use YYYY-MM-DD", {"value": value[:40]})
    return day.date()


class OrderIn(BaseModel):
    """One order (or order line) of a customer's history."""

    model_config = ConfigDict(extra="forbid")

    order_ts: Annotated[str, StringConstraints(strict=True, max_length=64)]
    amount: Number
    order_id: Id | None = None
    quantity: Number | None = None
    product_id: Text | None = None
    category: Text | None = None
    channel: Text | None = None
    _ts: datetime | None = PrivateAttr(default=None)

    @field_validator("order_ts")
    @classmethod
    def _check_ts(cls, value: str) -> str:
        parse_order_ts(value)
        return value

    @field_validator("amount")
    @classmethod
    def _no_returns(cls, value: float) -> float:
        if value < 0:
            raise PydanticCustomError(
                "return",
                "{value} is negative: returns are not accepted online; send each order's net value (0 or more)",
                {"value": value},
            )
        return value

    @field_validator("quantity")
    @classmethod
    def _positive_quantity(cls, value: float | None) -> float | None:
        if value is not None and value <= 0:
            raise PydanticCustomError("quantity", "{value} is not a positive number of units", {"value": value})
        return value

    @property
    def ts(self) -> datetime:
        if self._ts is None:
            self._ts = parse_order_ts(self.order_ts)
        return self._ts


class CustomerIn(BaseModel):
    """A customer and the orders to score them on."""

    model_config = ConfigDict(extra="forbid")

    customer_id: Id
    orders: Annotated[list[OrderIn], Field(min_length=1)]


class ScoreRequest(BaseModel):
    """Body of ``POST /score`` and ``POST /target``: ``customer_ids`` or ``customers`` (see module docs)."""

    model_config = ConfigDict(extra="forbid")

    customer_ids: Annotated[list[Id], Field(min_length=1)] | None = None
    customers: Annotated[list[CustomerIn], Field(min_length=1)] | None = None
    as_of: Annotated[str, StringConstraints(strict=True, max_length=64)] | None = None
    explain: Annotated[bool, Field(strict=True)] = False
    lang: Annotated[str, StringConstraints(strict=True, max_length=16)] | None = None
    _error: RequestError | None = PrivateAttr(default=None)

    @field_validator("customer_ids", "customers", mode="before")
    @classmethod
    def _not_too_many(cls, value: Any) -> Any:
        if isinstance(value, list) and len(value) > MAX_CUSTOMERS:
            raise PydanticCustomError(_TOO_BIG, "{n} customers; at most {limit} per request", {"n": len(value), "limit": MAX_CUSTOMERS})
        return value

    @field_validator("lang")
    @classmethod
    def _check_lang(cls, value: str | None) -> str | None:
        from training.i18n import LANGUAGES

        if value is not None and value not in LANGUAGES:
            raise PydanticCustomError("lang", "{lang} is not a language offered here; choose one of {languages}",
                                      {"lang": repr(value), "languages": ", ".join(LANGUAGES)})
        return value

    @field_validator("as_of")
    @classmethod
    def _check_as_of(cls, value: str | None) -> str | None:
        if value is not None:
            day = parse_day(value)
            if day > date.today():
                raise PydanticCustomError("future", "{day} is after today ({today})", {"day": str(day), "today": str(date.today())})
        return value

    @model_validator(mode="after")
    def _one_kind(self) -> "ScoreRequest":
        if (self.customer_ids is None) == (self.customers is None):
            raise PydanticCustomError("kind", "give exactly one of customer_ids (look up the snapshot) or customers (score histories)")
        if self.customers is None:
            return self
        n_orders = sum(len(c.orders) for c in self.customers)
        if n_orders > MAX_ORDERS:
            raise PydanticCustomError(_TOO_BIG, "{n} orders; at most {limit} per request", {"n": n_orders, "limit": MAX_ORDERS})
        seen: set[str] = set()
        for i, customer in enumerate(self.customers):
            if customer.customer_id in seen:
                raise PydanticCustomError(
                    "duplicate",
                    "customers[{i}]: customer_id '{cid}' appears twice; send all of a customer's orders in one entry",
                    {"i": i, "cid": customer.customer_id},
                )
            seen.add(customer.customer_id)
        end = day_end(self.as_of_day())
        for i, customer in enumerate(self.customers):
            for j, order in enumerate(customer.orders):
                if order.ts >= end:
                    raise PydanticCustomError(
                        "future",
                        "customers[{i}].orders[{j}].order_ts: {ts} is after as_of {as_of}{hint}",
                        {
                            "i": i,
                            "j": j,
                            "ts": order.order_ts,
                            "as_of": str(self.as_of_day()),
                            "hint": "" if self.as_of else " (as_of defaults to today)",
                        },
                    )
        return self

    def as_of_day(self) -> date:
        """The as-of date of a history request (today when not given)."""
        return parse_day(self.as_of) if self.as_of is not None else date.today()

    @classmethod
    def model_validate_json(cls, json_data, **kwargs):  # noqa: D102 - BentoML parses bodies through this
        """Parse a body; a bad one gives an instance carrying the error (see :meth:`check`).

        BentoML would answer a pydantic error with its own multi-part message; carrying the
        error to the endpoint lets it answer with one line and the right status.
        """
        try:
            return parse_request(json_data, cls)
        except RequestError as exc:
            bad = cls.model_construct()
            bad._error = exc
            return bad

    def check(self) -> "ScoreRequest":
        """Raise the :class:`RequestError` found while parsing, if any."""
        if self._error is not None:
            raise self._error
        return self


def _where(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif isinstance(part, str) and not part.startswith(("function-", "constrained-", "nullable")) and part not in ("str", "int", "list[...]"):
            out += f".{part}" if out else part
    return out


def _message(exc: ValidationError) -> tuple[str, int]:
    """One line for the first problem of a pydantic error, and the status it deserves."""
    errors = exc.errors(include_url=False, include_context=False, include_input=False)
    first = next((e for e in errors if e["type"] == _TOO_BIG or e["type"] == "too_long"), errors[0])
    status = 413 if first["type"] in (_TOO_BIG, "too_long") else 400
    if first["type"] == "json_invalid":
        return f"the request body is not valid JSON ({first['msg'].removeprefix('Invalid JSON: ')})", 400
    if first["type"] == "model_type" and not first["loc"]:
        return 'the request body must be a JSON object like {"customer_ids": ["c1"]}', 400
    where = _where(tuple(first["loc"]))
    text = first["msg"]
    if first["type"] == "extra_forbidden":
        text = "unknown field"
    elif first["type"].startswith("string_type") or first["type"] == "string_type":
        text = "must be a text (string)"
    elif first["type"] in ("float_type", "float_parsing"):
        text = "must be a number"
    elif first["type"] == "finite_number":
        text = "must be a finite number (no NaN or Infinity)"
    elif first["type"] == "too_short":
        text = "must not be empty"
    elif first["type"] == "missing":
        text = "is required"
    text = text.removeprefix("Value error, ")
    more = f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})" if len(errors) > 1 else ""
    line = f"{where}: {text}{more}" if where else f"{text}{more}"
    return " ".join(line.split()), status


def parse_request(body: bytes | str | dict | Any, model: type[ScoreRequest] = ScoreRequest) -> ScoreRequest:
    """Validate a request body (JSON text or an already-decoded object); raise :class:`RequestError`."""
    try:
        if isinstance(body, (bytes, bytearray, str)):
            if len(body) > MAX_BODY_BYTES:
                raise RequestError(f"the request body has {len(body):,} bytes; at most {MAX_BODY_BYTES:,}", 413)
            if not (body.strip() if isinstance(body, str) else bytes(body).strip()):
                raise RequestError('the request body is empty; send a JSON object like {"customer_ids": ["c1"]}')
            return BaseModel.model_validate_json.__func__(model, body)
        return BaseModel.model_validate.__func__(model, body)
    except ValidationError as exc:
        message, status = _message(exc)
        raise RequestError(message, status) from None
    except RecursionError:
        raise RequestError("the request body is nested too deeply") from None


# --------------------------------------------------------------------------- scoring


def history_orders(customers: list[CustomerIn]) -> pd.DataFrame:
    """The orders of history requests, exactly as a batch order log's orders (tested equal).

    The request models have checked every order already (:class:`OrderIn`); orders without
    ``order_id`` are their own orders, so the merged log is the lines sorted by customer
    and time (stable, as :func:`features.orders.merge_order_lines` sorts), with the
    contract's defaults filled in, built here directly: the general path
    (:func:`history_log_orders`) costs some 10 ms of pandas on one customer. Lines with an
    ``order_id`` take the general path, which merges them.
    """
    if any(o.order_id is not None for c in customers for o in c.orders):
        return history_log_orders(customers)
    rows = sorted(((c.customer_id, o.ts, o) for c in customers for o in c.orders), key=lambda row: row[:2])
    orders = [row[2] for row in rows]
    return pd.DataFrame(
        {
            "customer_id": pd.array([row[0] for row in rows], dtype="str"),
            "order_ts": np.array([row[1] for row in rows], dtype="datetime64[ns]"),
            "amount": np.array([o.amount for o in orders], dtype="float64"),
            # The contract's defaults: quantity 1, category and channel "unknown".
            "quantity": np.array([1.0 if o.quantity is None else o.quantity for o in orders], dtype="float64"),
            "category": pd.array(["unknown" if o.category is None else o.category for o in orders], dtype="str"),
            "channel": pd.array(["unknown" if o.channel is None else o.channel for o in orders], dtype="str"),
        },
        copy=False,
    )


def history_log_orders(customers: list[CustomerIn]) -> pd.DataFrame:
    """The orders of history requests through the batch log's validator and merger (general path)."""
    from features.orders import merge_order_lines, validate_order_lines

    columns: dict[str, list] = {"customer_id": [], "order_ts": [], "amount": []}
    optional = ("order_id", "quantity", "product_id", "category", "channel")
    # The contract's defaults (quantity 1, category and channel "unknown") apply to orders
    # that leave them out, so the model always sees the columns it was trained on.
    present = {"quantity", "category", "channel"}
    present |= {name for c in customers for o in c.orders for name in ("order_id", "product_id") if getattr(o, name) is not None}
    for name in optional:
        if name in present:
            columns[name] = []
    for customer in customers:
        for order in customer.orders:
            columns["customer_id"].append(customer.customer_id)
            columns["order_ts"].append(order.ts)
            columns["amount"].append(order.amount)
            for name in present:
                columns[name].append(getattr(order, name))
    raw = pd.DataFrame(columns)
    raw["order_ts"] = pd.to_datetime(raw["order_ts"]).astype("datetime64[ns]")
    lines = validate_order_lines(raw, "request")
    return merge_order_lines(lines, has_order_id="order_id" in lines.columns)


def score_histories(
    model, customers: list[CustomerIn], as_of: date, model_version: str, *, with_features: bool = False,
    tiers=None,
) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """Score rows for customers sent with their histories (same feature code as batch).

    Returns ``(scores, features)``, one row per customer in request order; ``features``
    (with the BTYD columns, what the targeting rules read) only when ``with_features``.
    ``tiers`` (:class:`training.tiers.Tiers`; None: the shipped tiers) sets the member-tier columns.
    """
    as_of_ts = pd.Timestamp(as_of)
    features = model.point_in_time_features(history_orders(customers), as_of_ts)
    order = [c.customer_id for c in customers]
    if features["customer_id"].astype(str).tolist() != order:
        features = features.set_index(features["customer_id"].astype(str)).reindex(order).reset_index(drop=True)
    scores = model.score_features(features, as_of_ts, model_version, tiers=tiers)
    return scores, (model.with_btyd(features) if with_features else None)


def apply_targeting(
    model, scores: pd.DataFrame, features: pd.DataFrame | None, rules=None, *, customer_ids: list[str] | None = None,
    lang: str | None = None,
) -> pd.DataFrame:
    """Score rows plus ``action``, ``reason``, ``rule`` and ``group`` from the rules (default rules when none).

    Scores with uplift keep their ``uplift_<action>`` columns, and ``uplift`` becomes the
    uplift of the action chosen (null without one, or for an action the model did not learn).

    ``group`` is the holdout draw of each customer with an action (``treatment`` or
    ``holdout``), with the row's ``as_of`` as the campaign date, exactly as ``repurchase
    target`` draws it. ``customer_ids`` are the ids to draw with when the rows carry stand-in
    ids (history batches score under unique keys). ``lang`` is the language of the reasons
    (``en``, ``zh``; default ``$REPURCHASE_LANG``, else English); every other value stays English.
    """
    from features.contacts import assign_groups
    from serving.targeting import Campaign, apply_rules, load_rules

    rules = rules if rules is not None else load_rules(None)
    reference = getattr(getattr(model, "spec_", None), "clv_reference", None)
    kwargs = {"clv_reference": reference} if reference is not None else {}
    targeted = apply_rules(scores, rules, features=features, campaign=Campaign(), lang=lang, **kwargs)
    if customer_ids is not None:
        groups = assign_groups(customer_ids, targeted["action"].to_numpy(dtype=object),
                               targeted["campaign_date"].fillna(pd.Timestamp(0)), targeted["holdout_share"])
        targeted["group"] = pd.Series(groups, index=targeted.index, dtype="str")
    return targeted[[*SCORE_COLUMNS, *uplift_columns(targeted.columns), *RULE_COLUMNS]]


def json_rows(frame: pd.DataFrame) -> list[dict]:
    """Rows as JSON-ready dicts: dates as ``YYYY-MM-DD``, NaN and NaT as ``None``, plain Python numbers."""
    if frame.empty:
        return []
    columns: dict[str, list] = {}
    for name in frame.columns:
        values = frame[name]
        if pd.api.types.is_datetime64_any_dtype(values):
            columns[name] = [None if pd.isna(v) else v.strftime("%Y-%m-%d") for v in values]
        elif pd.api.types.is_float_dtype(values):
            array = values.to_numpy(dtype=float)
            columns[name] = [None if math.isnan(v) else v for v in array.tolist()]
        elif pd.api.types.is_integer_dtype(values):
            columns[name] = values.to_numpy().tolist()
        else:
            columns[name] = [None if (v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA) else v for v in values.tolist()]
    names = list(columns)
    return [dict(zip(names, row)) for row in zip(*columns.values())]


def dedupe(ids: list[str]) -> list[str]:
    """Ids in request order, each once."""
    return list(dict.fromkeys(ids))


# --------------------------------------------------------------------------- the feature snapshot


class Snapshot:
    """The feature snapshot held in memory: one row per customer, looked up by id.

    Holds the feature rows (a pandas frame; a hash index on ``customer_id`` makes a
    lookup of one id a few microseconds) and, once :meth:`score_all` has run, every
    customer's score row computed by the served model, so that an id lookup costs a
    dictionary probe rather than a model call.
    """

    def __init__(self, features: pd.DataFrame, as_of: pd.Timestamp, source: str):
        self.features = features.reset_index(drop=True)
        self.as_of = as_of
        self.source = source
        self.index = pd.Index(self.features["customer_id"].astype(str).to_numpy())
        self.scores: pd.DataFrame | None = None
        self._rows: list[dict] | None = None
        self._tiers = None

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Snapshot":
        """Read a snapshot Parquet (``<scores>.features.parquet``); raise InputError when it is not one."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        path = Path(path)
        if not path.exists():
            raise InputError(f"snapshot {path}: no such file (it is written by `repurchase score` beside the scores)")
        try:
            frame = pq.read_table(path).to_pandas()
        except (pa.ArrowException, OSError) as exc:
            raise InputError(f"snapshot {path}: not a readable Parquet file ({str(exc).splitlines()[0]})") from None
        for column in ("customer_id", "as_of"):
            if column not in frame.columns:
                raise InputError(f"snapshot {path}: missing column '{column}'; give the <scores>.features.parquet of a batch run")
        if frame.empty:
            raise InputError(f"snapshot {path}: has no rows")
        as_of = pd.to_datetime(frame["as_of"]).dropna().unique()
        if len(as_of) != 1:
            raise InputError(f"snapshot {path}: has {len(as_of)} as_of dates; a snapshot is taken at one date")
        ids = frame["customer_id"].astype(str)
        if ids.duplicated().any():
            raise InputError(f"snapshot {path}: customer_id '{ids[ids.duplicated()].iloc[0]}' has more than one row")
        return cls(frame.drop(columns=["as_of"]), pd.Timestamp(as_of[0]).normalize(), str(path))

    def __len__(self) -> int:
        return len(self.features)

    def positions(self, ids: list[str]) -> tuple[np.ndarray, list[str]]:
        """Row positions of the known ids (request order) and the unknown ids."""
        found = self.index.get_indexer(ids)
        unknown = [i for i, p in zip(ids, found) if p < 0]
        return found[found >= 0], unknown

    def score_all(self, model, model_version: str, chunk_rows: int = 50_000, tiers=None) -> None:
        """Score every snapshot customer once (chunks, as batch scoring does) and keep the rows.

        ``tiers`` (:class:`training.tiers.Tiers`; None: the shipped tiers) sets the member-tier columns.
        """
        self._tiers = tiers
        parts = [
            model.score_features(self.features.iloc[start:start + chunk_rows], self.as_of, model_version, tiers=tiers)
            for start in range(0, len(self.features), chunk_rows)
        ]
        scores = pd.concat(parts, ignore_index=True)
        self._rows = json_rows(scores)
        self.scores = scores

    def score_rows(self, model, positions: np.ndarray, model_version: str) -> list[dict]:
        """JSON score rows at these positions (precomputed when :meth:`score_all` ran)."""
        if self._rows is not None:
            return [self._rows[p] for p in positions.tolist()]
        return json_rows(model.score_features(self.features.iloc[positions], self.as_of, model_version, tiers=self._tiers))


def check_snapshot_model(path: str | os.PathLike, model_version: str) -> None:
    """Refuse a snapshot that `repurchase score` wrote with another model version than the one served."""
    from features.common.outputs import read_stamp

    written_by = (read_stamp(path) or {}).get("model_version") or ""
    if written_by and model_version and written_by != model_version:
        raise InputError(
            f"snapshot {path} was written with model version {written_by}, but version {model_version} is served; "
            "rerun `repurchase score` with this model, or serve --model models:/repurchase/" + written_by
        )
