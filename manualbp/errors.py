"""The errors manualbp raises on purpose. ``train.py`` prints their message, without a stack
trace, and exits with status 1: each message says what was expected, what was found, and what to
do."""


class ManualbpError(Exception):
    """Base class: a problem the user can fix from the message alone."""


class ConfigError(ManualbpError, ValueError):
    """A configuration value (or command-line override) that cannot work."""


class DataError(ManualbpError):
    """Data that is missing, unreadable or inconsistent."""


class NonFiniteLossError(ManualbpError, FloatingPointError):
    """The training loss became NaN or infinite."""


class GradientMismatchError(ManualbpError):
    """manualbp's hand-written gradient disagrees with PyTorch's built-in autograd."""


class NotConvertibleError(ManualbpError, ValueError):
    """A torch module whose settings manualbp's twin does not support; ``convert`` leaves it and says why."""


class PerExampleError(ManualbpError, RuntimeError):
    """A per-example gradient that cannot be given: a layer without a per-example rule, batch norm in
    training (it mixes the examples), a layer that does not hold the batch in its first dimension."""
