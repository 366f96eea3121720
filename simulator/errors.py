"""User-facing errors.

A :class:`SpecError` carries a message a person can act on. Front doors (the CLI, the
REST service) turn it into one line on stderr with exit status 2, or a 422 response.
"""

from collections.abc import Iterable


class SpecError(ValueError):
    """A specification or argument that cannot be run, with a readable reason."""


def unknown(what: str, name: str, known: Iterable[str]) -> SpecError:
    """'unknown scenario 'x' (did you mean 'y'?); known: ...' as an error to raise."""
    import difflib

    names = sorted(known)
    close = difflib.get_close_matches(name, names, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return SpecError(f"unknown {what} {name!r}{hint}; known: {', '.join(names)}")
