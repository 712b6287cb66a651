"""English words a person reads in text that should be in another language (tests of ``--lang zh``)."""

from __future__ import annotations

import re

# Names that stay as they are in every language: models, metrics and products, and words of the
# Rich/ASCII table frames; machine names (snake_case columns, flags, paths, files) are skipped.
KEPT = frozenset({"BG", "NBD", "MBG", "BTYD", "LightGBM", "Gamma", "MLflow", "AUC", "PR", "ROC", "CLV", "LTV", "CAC",
                  "Gini", "macro", "F1", "Qini", "ECE", "MAPE", "Brier", "Spearman", "RFM", "L2", "P", "p", "x",
                  "VIP", "lifetimes", "uv", "mlflow", "ui", "sqlite"})
_TOKEN = re.compile(r"[A-Za-z0-9][\w\-./:@%]*(?:\(\w+\))?")  # P(alive) is notation, one token


def english_words(text: str, kept=()) -> list[str]:
    """The words of ``text`` in Latin letters that are neither names kept in every language (``KEPT``,
    ``kept``) nor machine names (with ``_``, ``-``, ``.``, ``/``, ``:`` or digits in them)."""
    allowed = KEPT | set(kept)
    words = []
    for token in _TOKEN.findall(text):
        token = token.rstrip(".:,;")
        if not token.isalpha() or token in allowed:
            continue
        words.append(token)
    return words
