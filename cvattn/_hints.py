"""The "Did you mean ...?" of the errors for unknown names (models, attention, methods, options, config keys)."""
from __future__ import annotations

import difflib
from collections.abc import Iterable


def did_you_mean(value: object, choices: Iterable[str], n: int = 3, quote: bool = True) -> str:
    """``" Did you mean 'a', 'b'?"`` with the up to ``n`` choices closest to ``value``, or ``""`` if none is close."""
    close = difflib.get_close_matches(str(value), list(choices), n=n)
    return f" Did you mean {', '.join(map(repr, close) if quote else close)}?" if close else ""
