"""One hierarchy of typed errors. Each message names what is wrong and how to fix it.

Every error is a ``CuantizaError``; most also derive from the built-in exception a caller
would naturally catch (``ValueError``, ``TypeError``, ``OSError``), so generic code keeps working.
"""


class CuantizaError(Exception):
    """Base of every error raised by cuantiza."""


class ConfigError(CuantizaError, ValueError):
    """A scheme or configuration value is invalid (bits, group size, axis, percentile...)."""


class UnsupportedDtypeError(CuantizaError, TypeError):
    """A tensor has a dtype that cannot be quantized (complex, integer, bool)."""


class NonFiniteError(CuantizaError, ValueError):
    """NaN or ±Inf where only finite values make sense (weights, all-NaN calibration data)."""


class ScaleOverflowError(CuantizaError, ValueError):
    """A scale does not fit the requested storage dtype (e.g. > 65504 for float16)."""


class ShapeError(CuantizaError, ValueError):
    """Shapes do not agree (group size vs. columns, packed length vs. logical length...)."""


class CalibrationError(CuantizaError, ValueError):
    """Calibration data is missing, empty, or left observers without statistics."""


class PlanError(CuantizaError, ValueError):
    """The model cannot take the requested plan (unsupported or misplaced modules)."""


class CorruptFileError(CuantizaError, OSError):
    """A file is truncated, corrupt or of an unknown format version."""


class UnsafeFileError(CuantizaError, OSError):
    """A file asks for something unsafe: pickle, paths outside the model folder."""


class OutputExistsError(CuantizaError, FileExistsError):
    """The output exists (or is the input) and overwriting was not asked for."""


class WriteError(CuantizaError, OSError):
    """An output could not be written (read-only file system, no permission, disk full); nothing
    was published and a previous output is intact. ``errno`` is the operating system's; ``path``
    the output the message names."""

    path: str | None = None
