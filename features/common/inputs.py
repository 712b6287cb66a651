"""Reading a small file a user names (rules, tiers, economics) within a size bound."""

from __future__ import annotations

from pathlib import Path

from features.common.errors import InputError


def read_small_file(path: Path | str, what: str, max_bytes: int, too_large: str,
                    error: type[InputError] = InputError) -> bytes:
    """The bytes of ``path``, or ``error`` with one line naming the file and what is wrong.

    ``what`` names the kind of file ("rules", "tiers"); ``too_large`` ends the message for a
    file over ``max_bytes`` ("larger than 1 MB; a rules file is a few kilobytes"). The read
    stops after ``max_bytes + 1`` bytes, because the path may be a device such as /dev/zero.
    """
    origin = str(path)
    path = Path(path)
    if not path.exists():
        raise error(f"{origin}: no such file")
    if path.is_dir():
        raise error(f"{origin}: is a folder, not a {what} file")
    try:
        with path.open("rb") as handle:
            raw = handle.read(max_bytes + 1)
    except OSError as exc:
        raise error(f"{origin}: cannot be read ({exc.strerror or exc})") from None
    if len(raw) > max_bytes:
        raise error(f"{origin}: {too_large}")
    return raw
