"""One simple registry: name -> callable, with a clear error listing known names."""
from .errors import unknown_name


class Registry(dict):
    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind

    def register(self, name: str):
        def deco(fn):
            if name in self:
                raise ValueError(f"{self.kind} {name!r} registered twice")
            self[name] = fn
            return fn
        return deco

    def get(self, name):  # noqa: D401  (dict.get semantics replaced on purpose)
        if name not in self:
            raise unknown_name(self.kind, name, self.keys())
        return self[name]
