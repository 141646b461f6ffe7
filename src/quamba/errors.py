"""Exception types raised by the public API; the CLI turns each into one line and exit code 2."""


class QuambaError(Exception):
    """Base class of every error a user can cause with bad input."""


class ModelLoadError(QuambaError):
    """A model directory or hub id that cannot be read: missing files, bad config, corrupt tensors."""


class UnsupportedModelError(ModelLoadError):
    """A config whose architecture this library does not implement."""


class CheckpointMismatchError(ModelLoadError):
    """A checkpoint whose tensors do not match the shapes its config implies."""


class InvalidArgumentError(QuambaError):
    """An argument outside what the operation accepts (empty prompt, unknown device, ...)."""


class CalibrationError(QuambaError):
    """Calibration data that is missing, too short, or that drives the model to NaN/Inf."""


class QuantizedFormatError(ModelLoadError):
    """A quantized checkpoint with an unknown format version or missing tensors."""
