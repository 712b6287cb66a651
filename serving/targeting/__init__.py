"""Targeting rules: turn score rows into audiences, one action per customer, with reasons.

A rules file is YAML::

    rules:
      - name: win_back                      # unique; shown in the ``rule`` column
        description: lapsed but still valuable   # optional, for people
        when: lifecycle_stage == 'lapsed' and clv_pct >= 0.7
        action: win_back                    # audience name, also the CSV file name
        reason:                             # one clause, or a list of clauses
          - "no order for {days_since_last:.0f} days"
          - "lifetime value {clv:,.0f}"
        reason_zh:                          # optional: the reason in Chinese (--lang zh), same placeholders
          - "已有 {days_since_last:.0f} 天没有下单"
          - "终身价值 {clv:,.0f}"
        holdout: 0.1                        # share kept back to measure the action (default 0.1; 0.0 = none)
        cooldown_days: 30                   # optional: skip customers in a campaign within 30 days
    budget:                                 # optional
      max_contacts: 5000                    # optional; no cap when left out
      contact_cost: 0.5                     # default 0
      rank_by: expected_value               # default; or uplift (needs scores with uplift)
    contact_cap: {days: 30, contacts: 2}    # optional: at most 2 contacts per customer in 30 days

Evaluation
----------
Rules are tried in file order on every score row; the first rule whose ``when`` is true
gives the customer its ``action``, ``reason`` and ``rule`` (name). A customer no rule
matches gets NaN in all three.

``when`` is an expression over columns, evaluated with :meth:`pandas.DataFrame.eval`
(python engine) after a check of its syntax tree: only column names, numbers, 'text',
lists of those, arithmetic (``+ - * / // %``), comparisons (``< <= == != >= >`` and
``in`` / ``not in``, chained as in ``1.5 <= overdue_ratio <= 3``), and ``and`` / ``or`` /
``not`` (or ``& | ~``) are allowed; no calls, attributes, indexing or powers. Line breaks
count as spaces. Two names in capitals stand for the shipped reminder cut points
(:data:`THRESHOLDS`, from :data:`training.segments.REMINDER`): ``REMIND_WITHIN_DAYS``, the
days within which a next order or purchase is due, and ``MIN_P_WITHIN_HORIZON``, the
least ``p_within_horizon`` of a category the customer still buys; the default rules use
them, so the rules and the replenishment counts of the CLI cannot drift apart. The result must be
true/false per row. A comparison with a missing value (NaN) is false, so
``next_order_days_p50 <= 14`` never picks a customer with no expected next order; note
that ``not`` turns that false into true, so prefer positive conditions.

Columns a condition can use
---------------------------
* the score contract (:data:`training.contract.SCORE_COLUMNS`);
* the feature snapshot's columns (``features=``, joined on ``customer_id``; a score
  column wins over a feature column of the same name);
* derived helper columns, computed before any rule runs:

  ``clv_pct``
      percentile of ``clv`` (0-1, 1 = highest). With ``clv_reference`` (the model's CLV
      distribution at training, ``model.spec_.clv_reference``) it is the share of that
      reference below the customer's CLV, so one customer scored alone gets the same
      value as in a batch; without it, the rank among the rows passed in (ties share
      their average rank).
  ``expected_order_value``
      ``expected_revenue / expected_orders`` where ``expected_orders > 0``, else the
      feature ``avg_order_value`` when the snapshot has it, else NaN.
  ``expected_value``
      ``p_repurchase * expected_order_value - contact_cost`` (``budget.contact_cost``,
      0 without a budget): the value of contacting the customer.
  ``uplift``
      the change in P(an order within the window) that contacting with **the rule's own
      action** causes: in a rule for ``win_back``, the scores' ``uplift_win_back``. Scores
      from a model trained with ``repurchase train --uplift`` carry ``uplift_<action>`` for
      every action it learned (and ``uplift``, the largest of them); for an action it did
      not learn, ``uplift`` is NaN. Scores with only an ``uplift`` column use it for every
      action. Without any uplift in the scores it is NaN, so a rule on it matches nobody.
      In reasons and in the output, ``uplift`` is that of the action the customer got.
  ``incremental_value``
      ``uplift * expected_order_value - contact_cost``: what contacting adds, in money,
      minus what it costs (per rule's action, as ``uplift``).
  ``replenish_category``, ``replenish_days_p50``, ``replenish_p_within_horizon``,
  ``replenish_remind_on``, ``replenish_days_since_last``, ``replenish_gap_days``
      from the product-level replenishment frame (``replenishment=``), for each customer
      the most urgent category: the smallest ``next_purchase_days_p50`` (categories
      with ``p_within_horizon`` under ``MIN_P_WITHIN_HORIZON`` last), ties broken by the
      higher ``p_within_horizon``. ``replenish_days_since_last`` is days from
      ``last_purchase`` to ``as_of``; ``replenish_gap_days`` is the frame's
      ``gap_days`` column when it has one, else the predicted cycle
      ``replenish_days_since_last + replenish_days_p50``. All NaN without the frame,
      so a rule on them simply matches nobody.

Reasons
-------
``reason`` is a template in words, or a list of templates (clauses) joined with "; ".
Placeholders name columns and may carry a format spec: ``{gap_mean:.0f}``,
``{p_repurchase:.0%}``, ``{replenish_remind_on:%Y-%m-%d}``. Missing values read
sensibly: a clause that names a missing value (NaN, or a feature column the snapshot
does not have, e.g. no snapshot was given) is left out; only when every clause would be
left out are the clauses kept with "unknown" in place of the missing values. Without a
format spec whole numbers print without ".0" and midnight timestamps as dates.

``reason_zh`` (optional, same syntax) is the reason in Chinese, used with ``--lang zh``
(or ``"lang": "zh"`` in an API request); a rule without it gives its ``reason``. In
Chinese, ``{lifecycle_stage}``, ``{rfm_segment}``, ``{member_tier}``, ``{predicted_tier}``
and ``{action}`` without a format spec show their labels (衰退期 for ``at_risk``), clauses
are joined with "；" and a missing value reads "未知"; ``held_back`` says why in Chinese too. The
columns keep their English values.

Budget
------
With ``budget``, customers who got an action are ranked by ``expected_value``; those
with ``expected_value > 0`` are kept, highest first, up to ``max_contacts``; all others
lose their action, reason and rule (NaN), so the audiences are the contacts worth paying
for. ``rank_by: uplift`` ranks by ``incremental_value`` instead (the uplift of the
action each customer got): the contacts that add most, not the customers who would buy
anyway; customers whose action has no learned uplift are not kept. It needs scores with
uplift (a :class:`RulesError` otherwise, rather than empty audiences).

Holdouts and contact hygiene
----------------------------
Every action keeps a random holdout (``DESIGN.md``, "Campaigns"). Applied with a
:class:`Campaign` (as ``repurchase target``, quickstart and ``/target`` do), each customer
given an action gets ``group`` ``treatment`` or ``holdout`` by
:func:`features.contacts.holdout_draw` of (customer id, action, campaign date), below the
rule's ``holdout`` share (default :data:`~features.contacts.DEFAULT_HOLDOUT_SHARE`, 10%)
meaning holdout. The draw is a hash, so it is the same on every rerun of the same day,
uniform, and independent of every score. The campaign date is each score row's ``as_of``
unless ``Campaign.date`` is given (``repurchase target --campaign-date``). Audience rows
carry ``group``, ``campaign_date`` and ``holdout_share``: with ``customer_id`` and
``action`` they are the rows of the contacts file that ``repurchase measure`` reads
(``contacted_at`` = ``campaign_date``). Without a campaign, only the decisions are made.

With past contacts (``Campaign.contacts``, :func:`features.contacts.load_contacts`), two
rules hold customers back; a held-back customer keeps the action in its audience file,
with ``held_back`` saying why, and is not sent (nor counted in the holdout: record only rows
without ``held_back`` as contacts, so both groups lose the same customers):

* ``cooldown_days`` on a rule: not when the customer was in any campaign (sent, or held
  out: a later message would spoil that measurement) fewer than that many days before the
  campaign date: "contacted 3 days ago for replenishment_reminder (cooldown 14 days)",
  "in the holdout of win_back 3 days ago (cooldown 30 days)";
* ``contact_cap: {days: D, contacts: N}`` for the file: not when the customer was sent N
  messages or more in the D days before the campaign date (holdouts were sent nothing and
  do not count): "contacted 2 times in the last 30 days (cap 2)".

Contacts dated after the campaign date are ignored. A budget ranks only customers who are
not held back; the holdout is drawn from the customers the budget keeps.

Limits
------
A rules file is read by people and written by people, so anything far beyond what a
person writes is refused when the file is loaded, before any value is computed: a
hostile or mistaken file must not take the machine's memory (a format width of
``99999999`` on a million rows is tens of gigabytes). The limits:

* the file: at most 1 MB (:data:`~serving.targeting.loading.MAX_RULES_FILE_BYTES`), YAML nested at most 32 levels
  deep and at most 20,000 values once aliases are expanded (a rules file has about 5
  levels and a few hundred values; the bounds stop deep nesting and alias bombs),
  at most 200 rules;
* ``when``: at most 2,000 characters, 500 terms (names, numbers, texts, operators) and
  50 levels of nesting; arithmetic (``+ - * / // % & |``) only on numbers: text and
  lists can be compared (``==``, ``in``) but not repeated, joined or %-formatted
  (``'a' * 1000000000`` would build a gigabyte). Text constants are refused at load,
  text columns when the rules are applied;
* ``reason``: at most 1,000 characters and 20 placeholders over all clauses; a format
  spec has at most 50 characters, a width of at most 50 and a precision of at most 20,
  and no nested placeholders; a date spec (``%Y-%m-%d``) has directives without widths.

Errors
------
Every problem with a rules file raises :class:`RulesError` with one line naming the
file, the rule (position from 1 and name) and the field, e.g.
``rules.yaml: rule 2 'win_back': when: unknown column 'clv_rank'; columns: ...``.
Syntax, limits, placeholders and format specs are checked when the file is loaded;
column names, arithmetic on text columns and true/false results when the rules are
applied, before any rule runs.

Modules
-------
``schema`` (what a rules file may say), ``loading`` (reading one, bounded),
``expressions`` (the ``when`` language), ``columns`` (the derived columns), ``reasons``
(reason templates), ``campaigns`` (holdout dates, cooldowns and the cap), ``apply``
(:func:`apply_rules`), ``audiences`` (:func:`write_audiences`), and ``default_rules.yaml``.
"""

from serving.targeting.apply import apply_rules
from serving.targeting.audiences import spreadsheet_safe, write_audiences
from serving.targeting.campaigns import CAMPAIGN_COLUMNS, Campaign
from serving.targeting.columns import DERIVED_COLUMNS, REPLENISH_COLUMNS
from serving.targeting.expressions import THRESHOLDS
from serving.targeting.loading import load_rules
from serving.targeting.schema import Budget, ContactCap, Rule, RuleSet, RulesError

__all__ = [
    "CAMPAIGN_COLUMNS",
    "DERIVED_COLUMNS",
    "REPLENISH_COLUMNS",
    "THRESHOLDS",
    "Budget",
    "Campaign",
    "ContactCap",
    "Rule",
    "RuleSet",
    "RulesError",
    "apply_rules",
    "load_rules",
    "spreadsheet_safe",
    "write_audiences",
]
