"""Backbone exports (:mod:`equissl.export.formats`); importing registers our timm model names.

``equissl.export`` is also the Python API's export function (:func:`equissl.api.export`): once this
package is imported, Python makes it the ``export`` attribute of ``equissl``, so the package itself is
callable and forwards the call to that function.
"""

from __future__ import annotations

import sys
import types
from typing import Any

from equissl.export import timm_models  # noqa: F401  (registers equissl_poly_vit_* with timm)


class _CallablePackage(types.ModuleType):
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from equissl.api import export

        return export(*args, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage
