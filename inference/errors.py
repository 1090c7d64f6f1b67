"""The engine's errors that callers act on (no torch needed to catch them)."""


class PromptTooLong(ValueError):
    """Even the newest message alone does not fit the model's context."""
