"""What a person reads, in their language: ``--lang en|zh`` (DESIGN.md, "Languages").

Machine names (columns, actions, segments, JSON keys) stay English everywhere; only text
for people is translated: the report, CLI tables, audience reasons, and the labels of
segments, lifecycle stages, tiers and actions.

Messages are gettext catalogs kept as ``.po`` sources in ``training/locale/<lang>/LC_MESSAGES/
repurchase.po``. They are compiled in memory on first use (Babel's ``read_po`` and
``write_mo``), so a fresh clone needs no build step and no compiled ``.mo`` is committed.
English is the source language: its messages are the msgids themselves. Numbers and dates
are formatted by Babel for the language's locale.

To update the catalog after changing messages::

    pybabel extract -F babel.cfg -k N_ -k NC_:1c,2 -o /tmp/repurchase.pot .
    pybabel update -i /tmp/repurchase.pot -d training/locale -D repurchase
"""

from __future__ import annotations

import datetime as dt
import decimal
import functools
import io
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from babel import Locale
from babel.dates import format_date
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from babel.numbers import format_decimal, format_percent
from babel.support import NullTranslations, Translations

LANGUAGES = ("en", "zh")
DEFAULT_LANGUAGE = "en"
LANG_ENV = "REPURCHASE_LANG"
DOMAIN = "repurchase"
LOCALE_DIR = Path(__file__).parent / "locale"
DASH = "–"
# Babel locales: Simplified Chinese as used in mainland China.
_LOCALES = {"en": "en", "zh": "zh_Hans_CN"}
# Dates: English keeps ISO dates (what the report always showed); Chinese "2025年6月30日".
_DATE_FORMATS = {"en": "yyyy-MM-dd", "zh": "long"}


def N_(message: str) -> str:
    """Marks a message for the catalog (``pybabel extract -k N_``); it is translated where it is shown."""
    return message


def NC_(context: str, message: str) -> str:
    """Marks a label for the catalog under ``context`` (``pybabel extract -k NC_:1c,2``)."""
    return message


# Labels of machine names, under a context (msgctxt) naming the column, so that e.g. the
# segment "new" and the stage "new" can read differently. Listed here so that the catalog
# keeps them (they are looked up by value, which extraction cannot see); an action of a
# user's own rules has no label and shows as its words.
MACHINE_LABELS = (
    NC_("rfm_segment", "champions"), NC_("rfm_segment", "loyal"), NC_("rfm_segment", "cannot_lose"),
    NC_("rfm_segment", "at_risk"), NC_("rfm_segment", "potential_loyalist"), NC_("rfm_segment", "new"),
    NC_("rfm_segment", "promising"), NC_("rfm_segment", "need_attention"), NC_("rfm_segment", "about_to_sleep"),
    NC_("rfm_segment", "hibernating"), NC_("rfm_segment", "lost"),
    NC_("lifecycle_stage", "new"), NC_("lifecycle_stage", "active"), NC_("lifecycle_stage", "at_risk"),
    NC_("lifecycle_stage", "lapsed"), NC_("lifecycle_stage", "churned"),
    # the previous value of customers acquired since the previous run (serving.migration.NEW)
    NC_("lifecycle_stage", "acquired_since"), NC_("rfm_segment", "acquired_since"),
    NC_("member_tier", "silver"), NC_("member_tier", "gold"), NC_("member_tier", "diamond"),
    NC_("action", "vip_care"), NC_("action", "replenishment_reminder"), NC_("action", "churn_warning"),
    NC_("action", "win_back"), NC_("action", "new_customer_nurture"), NC_("action", "tier_upgrade_nudge"),
    NC_("action", "tier_retention"),
    NC_("group", "treatment"), NC_("group", "holdout"),
)


def resolve_language(lang: str | None = None) -> str:
    """``lang``, else ``$REPURCHASE_LANG``, else English; ValueError for a language not offered."""
    chosen = lang if lang not in (None, "") else os.environ.get(LANG_ENV) or DEFAULT_LANGUAGE
    code = str(chosen).strip().lower().replace("-", "_").split("_")[0].split(".")[0]
    if code not in LANGUAGES:
        source = "--lang" if lang not in (None, "") else LANG_ENV
        raise ValueError(f"{source}: {chosen!r} is not a language offered here; choose one of {', '.join(LANGUAGES)}")
    return code


@functools.cache
def translations(lang: str) -> NullTranslations:
    """The catalog of ``lang``, compiled in memory from its ``.po`` source (English: no catalog)."""
    if lang == DEFAULT_LANGUAGE:
        return NullTranslations()
    po = LOCALE_DIR / lang / "LC_MESSAGES" / f"{DOMAIN}.po"
    with po.open("rb") as source:
        catalog = read_po(source, locale=_LOCALES[lang], domain=DOMAIN)
    compiled = io.BytesIO()
    # fuzzy entries are drafts: left out, as msgfmt does
    write_mo(compiled, catalog, use_fuzzy=False)
    compiled.seek(0)
    return Translations(compiled, domain=DOMAIN)


def _exact(number: float) -> decimal.Decimal:
    # Babel rounds Decimals half-even on their digits; the exact binary value rounds as Python's
    # own f"{x:.3f}" does, so English numbers stay what they were.
    return decimal.Decimal(number)


def finite_number(value) -> float | None:
    """``value`` as a finite float, or None when it is missing, NaN, infinite or not a number."""
    if value is None or isinstance(value, (bool, str)):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


@dataclass(frozen=True)
class Language:
    """Messages, labels and number formats of one language; ``Language("zh")``."""

    code: str = DEFAULT_LANGUAGE
    catalog: NullTranslations = field(init=False, repr=False, compare=False)
    locale: Locale = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "catalog", translations(self.code))
        object.__setattr__(self, "locale", Locale.parse(_LOCALES[self.code]))

    @property
    def is_default(self) -> bool:
        return self.code == DEFAULT_LANGUAGE

    def gettext(self, message: str) -> str:
        return self.catalog.gettext(message)

    def ngettext(self, singular: str, plural: str, n: int) -> str:
        return self.catalog.ngettext(singular, plural, n)

    def pgettext(self, context: str, message: str) -> str:
        return self.catalog.pgettext(context, message)

    def label(self, kind: str, name) -> str:
        """How a person reads a machine name: ``potential_loyalist`` -> "potential loyalist" / "潜力忠诚客户".

        Names not in the catalog (a user's own action, say) show as their English words.
        """
        text = str(name)
        translated = self.pgettext(kind, text)
        return translated if translated != text else text.replace("_", " ")

    def name_or_label(self, kind: str, name) -> str:
        """In English the machine name itself (as the CLI's tables show it), else its label."""
        return str(name) if self.is_default else self.label(kind, name)

    # -- numbers and dates ---------------------------------------------------------------------

    def count(self, value) -> str:
        """Whole number with the locale's grouping: ``23,570``."""
        number = finite_number(value)
        return DASH if number is None else format_decimal(_exact(number), "#,##0", locale=self.locale)

    def decimal(self, value, decimals: int = 3) -> str:
        """A number with fixed decimals: ``0.775``."""
        number = finite_number(value)
        pattern = "#,##0" + ("." + "0" * decimals if decimals > 0 else "")
        return DASH if number is None else format_decimal(_exact(number), pattern, locale=self.locale)

    def signed(self, value, decimals: int = 3) -> str:
        """A number with its sign: ``+0.011``."""
        number = finite_number(value)
        if number is None:
            return DASH
        return ("-" if math.copysign(1.0, number) < 0 else "+") + self.decimal(abs(number), decimals)

    def percent(self, value, decimals: int = 1) -> str:
        """A share as a percentage: ``0.341`` -> ``34.1%``."""
        number = finite_number(value)
        pattern = "#,##0" + ("." + "0" * decimals if decimals > 0 else "") + "%"
        # scaled in floating point first, as f"{100 * x:.1f}%" did, then exactly back
        return DASH if number is None else format_percent(_exact(100 * number) / 100, pattern, locale=self.locale)

    def signed_percent(self, value, decimals: int = 1) -> str:
        number = finite_number(value)
        if number is None:
            return DASH
        return ("-" if math.copysign(1.0, number) < 0 else "+") + self.percent(abs(number), decimals)

    def date(self, value) -> str:
        """A date: ``2025-06-30`` in English, ``2025年6月30日`` in Chinese."""
        if isinstance(value, dt.datetime):
            value = value.date()
        return format_date(value, _DATE_FORMATS[self.code], locale=self.locale)


def language(lang: "Language | str | None" = None) -> Language:
    """The :class:`Language` of ``lang`` (resolved by :func:`resolve_language`, so ``$REPURCHASE_LANG`` is read now);
    a :class:`Language` is returned as it is, so functions may take either."""
    if isinstance(lang, Language):
        return lang
    return _language(resolve_language(lang))


@functools.cache
def _language(code: str) -> Language:
    return Language(code)


# --- plots -----------------------------------------------------------------------------------

CJK_FAMILIES = ("Noto Sans CJK SC", "Source Han Sans SC", "WenQuanYi Zen Hei", "Microsoft YaHei", "PingFang SC",
                "SimHei")
_CJK_FILE_HINTS = ("notosanscjk", "sourcehansans", "wqy-zenhei", "msyh", "pingfang", "simhei")


@functools.cache
def cjk_font_family() -> str | None:
    """A font family with Chinese glyphs that matplotlib can use, None when none is installed.

    matplotlib's font list is cached from the first run, so a font installed later (e.g.
    ``apt-get install fonts-noto-cjk``) is added from the system font folders here.
    """
    from matplotlib import font_manager

    def known():
        names = {f.name for f in font_manager.fontManager.ttflist}
        return next((family for family in CJK_FAMILIES if family in names), None)

    family = known()
    if family is None:
        for path in font_manager.findSystemFonts():
            if any(hint in Path(path).name.lower().replace("_", "") for hint in _CJK_FILE_HINTS):
                try:
                    font_manager.fontManager.addfont(path)
                except (OSError, RuntimeError, ValueError):
                    continue
        family = known()
    return family


def use_language_fonts(fig, lang: Language | str) -> None:
    """Give every text of ``fig`` a CJK fallback font when the language needs one.

    Set per figure on its text artists, not in ``rcParams``, so drawing stays free of global
    state; Latin text keeps the default font and Chinese glyphs fall back to the CJK font.
    """
    code = lang.code if isinstance(lang, Language) else lang
    if code != "zh":
        return
    family = cjk_font_family()
    if family is None:
        return
    from matplotlib import rcParams
    from matplotlib.text import Text

    fallback = [*rcParams["font.sans-serif"][:1], family]
    for text in fig.findobj(Text):
        text.set_fontfamily(fallback)
