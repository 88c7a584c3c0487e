"""Model specs, checked without torch: a built-in model's name or ``module:function``.

A config names its model before anything is built; this module lets the config refuse
a misspelt name at once, without importing torch (:mod:`p2pfl.learning.models` builds
the models and keeps its builders in step with :data:`BUILTIN_MODELS`).
"""

from __future__ import annotations

import difflib
import re

from p2pfl.errors import ConfigError

__all__ = ["BUILTIN_MODELS", "check_model_spec"]

#: The models :func:`p2pfl.learning.models.build_model` builds by name.
BUILTIN_MODELS = ("cnn", "logreg", "mlp")
_FUNCTION = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*")


def check_model_spec(spec: str) -> None:
    """Refuse a model spec that is neither a built-in name nor ``module:function``.

    Whether the function imports and builds a fitting model is only known once the
    dataset is loaded (:func:`p2pfl.learning.build.make_model`).

    Raises:
        ConfigError: (field ``model``) with the valid names and the closest one.
    """
    text = spec.strip()
    if ":" in text:
        if not _FUNCTION.fullmatch(text):
            raise ConfigError("model", f"{spec!r} is not module:function (e.g. mypackage.models:build_model)")
        return
    if text.lower() in BUILTIN_MODELS:
        return
    close = difflib.get_close_matches(text.lower(), BUILTIN_MODELS, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise ConfigError(
        "model", f"unknown model {spec!r}{hint}; choose {', '.join(BUILTIN_MODELS)} or module:function"
    )
