"""The error every model-definition module raises for what the engine does not run."""


class UnsupportedModelError(ValueError):
    """The model's architecture or a feature of its config is not implemented."""
