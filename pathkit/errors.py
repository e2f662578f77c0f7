"""Exceptions pathkit raises. Every message names the file, column or key at fault and what to do."""


class PathkitError(Exception):
    """Base class of pathkit's errors."""


class SlideReadError(PathkitError, OSError):
    """A slide file cannot be read (unsupported format, truncated, not an image)."""


class MppError(PathkitError, ValueError):
    """The slide's microns-per-pixel is missing or implausible."""


class NotBrightfieldError(PathkitError, ValueError):
    """The image is fluorescence / multiplex, not an RGB brightfield (H&E) slide."""


class WeightsError(PathkitError, ValueError):
    """A weights file is missing, corrupted, unsafe, or does not fit the architecture."""


class UnsafePickleError(WeightsError):
    """A checkpoint would execute code when unpickled."""


class GridError(PathkitError, ValueError):
    """Tile coordinates do not fit the grid a model expects."""


class TableError(PathkitError, ValueError):
    """A clinical / RNA / manifest table has missing, duplicate or conflicting ids."""


class ChecksumError(PathkitError, ValueError):
    """A file's checksum differs from the one recorded."""


class ModelNotFoundError(PathkitError, KeyError):
    """A model name is not in the registry."""

    def __str__(self):  # KeyError quotes its message; show it plainly
        return str(self.args[0]) if self.args else ""


class CohortError(PathkitError, RuntimeError):
    """Every slide of a cohort run failed (the first errors are in the message, all in the state file)."""


class ParameterError(PathkitError, ValueError):
    """An argument has a value that cannot work (batch_size=0, an unknown device, a tile size <= 0 ...)."""


class StainError(PathkitError, ValueError):
    """A stain reference or normaliser is unusable (blank reference, unknown method, bad saved data)."""


class EngineError(PathkitError, RuntimeError):
    """An inference engine (OpenVINO, ONNX Runtime) asked for by name cannot run a model: the export failed
    or its output differs from torch's beyond float32 rounding."""


class CorruptFileError(PathkitError, OSError):
    """A data file pathkit reads (an HDF5 / h5ad bag, a parquet table, a JSON record) is empty, cut short, or
    of another kind than its name says; the message names the file, what it looks like and the next step."""
