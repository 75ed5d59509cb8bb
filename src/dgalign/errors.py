"""User-facing errors: a concise message, no traceback, a non-zero exit from the CLI."""


class DGAlignError(Exception):
    """Bad input or a missing optional part; the message says what was wrong and what is valid."""


class UnknownNameError(DGAlignError):
    """A name not in one of the tables (models, rewards, methods, suites)."""

    def __init__(self, kind: str, name: str, valid):
        super().__init__(f"unknown {kind} {name!r}; valid: {', '.join(sorted(valid))}")


class RewardError(DGAlignError):
    """A reward raised or returned a non-finite value."""


class Unavailable(DGAlignError):
    """Something a valid name needs is missing on this machine (a package, a trained model, a data file): for
    whoever runs dgalign here to install, not a mistake in the request. The server does not show its message
    (it names the machine's paths) to clients."""
