"""``lithops.multiprocessing``: :mod:`cloudbutton.multiprocessing` itself, submodules included
(``cloudbutton.lithops.multiprocessing.managers`` is ``cloudbutton.multiprocessing.managers``)."""

import importlib
import importlib.abc
import importlib.util
import sys

from .. import multiprocessing as _target


class _Aliases(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports ``<this module>.X`` as the module ``cloudbutton.multiprocessing.X`` (one module, not a copy)."""

    prefix = __name__ + "."

    def find_spec(self, name, path=None, target=None):
        if not name.startswith(self.prefix):
            return None
        if importlib.util.find_spec(self._target(name)) is None:
            return None
        return importlib.util.spec_from_loader(name, self)

    def _target(self, name: str) -> str:
        return f"{_target.__name__}.{name[len(self.prefix):]}"

    def create_module(self, spec):
        return importlib.import_module(self._target(spec.name))

    def exec_module(self, module) -> None:
        pass  # imported already


sys.meta_path.insert(0, _Aliases())
sys.modules[__name__] = _target
