"""Inference backends behind one interface (``Backend``); ``create_backend`` picks one."""

from models.backends.base import Backend
from models.backends.select import BACKEND_NAMES, available_backends, create_backend

__all__ = ["BACKEND_NAMES", "Backend", "available_backends", "create_backend"]
