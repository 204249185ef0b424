"""loc-unlearn: does localizing knowledge in value vectors help to unlearn it?

Definitions live in shared SPEC.md (cited as "SPEC §n"); architecture in DESIGN.md and docs/contracts.md.
"""
__version__ = "0.1.0"
