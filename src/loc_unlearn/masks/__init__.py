"""Masks over value vectors and the localization methods that produce them (docs/localizers.md)."""
from .mask import Mask

__all__ = ["Mask"]
