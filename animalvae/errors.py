"""The project's exceptions: one base class, so a root script can tell a user mistake from a bug."""

__all__ = ["AnimalVAEError", "ConfigError", "ItemFailed", "ItemSkipped"]


class AnimalVAEError(Exception):
    """Base class of every error this package raises on purpose."""


class ConfigError(AnimalVAEError):
    """A bad setting or missing prerequisite: reported before any work starts, exit code 2.

    ``problems`` holds one line per problem, each naming the key, the value and the rule.
    """

    def __init__(self, problems: str | list[str]):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))


class _ItemOutcome(AnimalVAEError):
    """An item's outcome other than ok: a one-line reason, plus manifest ``fields`` (the
    facts that decided it, e.g. ``rms_dbfs`` of a silent clip) for a later run to read."""

    def __init__(self, reason: str, **fields: object):
        super().__init__(reason)
        self.fields = fields


class ItemFailed(_ItemOutcome):
    """One work item could not be processed; the message is the one-line manifest reason."""


class ItemSkipped(_ItemOutcome):
    """One work item was deliberately not processed (e.g. silent audio); the message says why."""
