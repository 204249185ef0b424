"""The localization methods' registry: each method file adds its score function here, and the package
(`masks.localize`) imports the method files, so the files never import the package (no import cycle)."""
from ...registry import Registry

LOCALIZERS = Registry("localization method")
