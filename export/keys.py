"""Strict keys: what every reader of user-written keys says about one it does not know.

A key nobody reads is a typo until proven otherwise (`action` for `actions`, `histroy`, `video_duration`):
ignoring it would change a result silently. Every reader of keys a user types or writes (sequence files,
`--candidate` / `--user` / `--history` KEY=VALUE parts, feature declarations, the arrays of a request) checks
them here, against the keys it derives from what it serves, and names the key, where it was, the closest
allowed key and every allowed key.

Plain Python (difflib): the client and the build both use it.
"""
from __future__ import annotations

import difflib


def closest(word, choices) -> str | None:
    """The allowed word closest to `word` (difflib), or None when none is close."""
    found = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return found[0] if found else None


def unknown_key(key, allowed, where: str, what: str = "key") -> str:
    """`<where>: unknown <what> 'x'; did you mean 'y'? (<what>s allowed: 'a', 'b')`."""
    allowed = list(dict.fromkeys(allowed))
    hint = closest(key, allowed)
    return (f"{where}: unknown {what} {key!r}" + (f"; did you mean {hint!r}?" if hint else "")
            + f" ({what}s allowed: {', '.join(repr(a) for a in allowed) or 'none'})")


def check_keys(given, allowed, where: str, error: type[Exception] = ValueError, what: str = "key") -> None:
    """Raise `error` with `unknown_key`'s message for the first key of `given` that is not in `allowed`."""
    allowed = list(allowed)
    for key in given:
        if key not in allowed:
            raise error(unknown_key(key, allowed, where, what))
