"""loc-unlearn: does localizing knowledge in value vectors help to unlearn it?

Definitions live in docs/ (index docs/README.md; cited as "docs/<page>.md#<anchor>"); interfaces in docs/contracts.md.
The plug-in API (loc_unlearn.plugins: register_objective, localizer, ...) is re-exported here, lazily:
importing the package imports nothing else, torch least of all.
"""
__version__ = "0.1.0"

_PLUGIN_API = ("localizer", "metric", "objective", "register_localizer", "register_metric", "register_objective",
               "load_plugins", "check_methods")


def __getattr__(name):
    if name in _PLUGIN_API:
        from . import plugins

        return getattr(plugins, name)
    raise AttributeError(f"module 'loc_unlearn' has no attribute {name!r}")


__all__ = ["__version__", *_PLUGIN_API]
