"""Errors the ML side raises, on the shared "link failed" versus "data is bad" split.

A bad artifact or a bad image is a ``DataError`` (retrying will not help); a backend that cannot
run on this machine is a ``BackendUnavailable`` so callers can fall back to another one.
"""

from appliance.errors import DataError, SpokeError


class ModelError(DataError):
    """A model config, checkpoint or ONNX graph is unusable."""


class ArtifactError(ModelError):
    """A model artifact is incomplete, altered or inconsistent with its card."""


class ImageError(DataError):
    """An image was refused before or while decoding it."""


class EmptyImage(ImageError):
    """A zero-byte upload."""


class ImageTooLarge(ImageError):
    """More encoded bytes than the configured cap."""


class TooManyPixels(ImageError):
    """A header announcing more pixels than allowed: refused before decoding (a bomb)."""


class UnsupportedImage(ImageError):
    """Not a JPEG, PNG or TIFF, or not an image at all."""


class TruncatedImage(ImageError):
    """The file ends before the image data does."""


class BackendError(SpokeError):
    """An inference backend failed at run time, or was given input of the wrong shape or type."""


class BackendUnavailable(BackendError):
    """The backend cannot run here (missing package, no GPU); another backend may."""
