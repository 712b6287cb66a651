"""Errors that mean "the input is wrong", as opposed to a bug.

The CLI turns every :class:`InputError` into one line on stderr and exit code 2; the
HTTP service turns it into a 4xx answer. Messages name the file, the column, the row and
what to do, so they can be shown to a user as they are.
"""

from __future__ import annotations


class InputError(ValueError):
    """Something the user gave us (a file, a flag, a request) cannot be used as it is."""


class OrderLogError(InputError):
    """The order log is missing, unreadable, or breaks the order-log contract."""


class CutoffError(InputError):
    """A cutoff or as-of date that the data cannot support."""
