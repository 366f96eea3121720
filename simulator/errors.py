"""User-facing errors.

A :class:`SpecError` carries a message a person can act on. Front doors (the CLI, the
REST service) turn it into one line on stderr with exit status 2, or a 422 response.
"""


class SpecError(ValueError):
    """A specification or argument that cannot be run, with a readable reason."""
