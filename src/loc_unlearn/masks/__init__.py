"""Masks over value vectors and the localization methods that produce them (SPEC §6)."""
from .mask import Mask

__all__ = ["Mask"]
