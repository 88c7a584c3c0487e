"""Loading an organisation's learner: ``learner = "module:function"`` in node.toml.

The organisation's own code builds its model and reads its private data; p2pfl only
imports the function (node.toml's folder is importable) and calls it with
``learner_args``. Everything that can go wrong on the way is a ConfigError naming
``learner`` or ``learner_args`` and the fix.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from p2pfl.deploy.config import OrgNodeConfig
from p2pfl.errors import ConfigError, P2PFLError
from p2pfl.learning.learner import Learner, TorchLearner
from p2pfl.learning.metrics import check_metrics, resolve_metrics

__all__ = ["build_learner", "import_learner", "learner_kwargs"]

log = logging.getLogger(__name__)


def build_learner(config: OrgNodeConfig, base: Path) -> Learner:
    """Import ``module:function`` and call it with ``learner_args``.

    The node.toml folder is importable, so an organisation can keep its learner module
    next to its config. ``index`` (which init writes into every node.toml) is passed
    only to a function that takes it; any other argument mismatch, an import failure
    or an exception from the function is a ConfigError naming ``learner``/``learner_args``.
    """
    factory = import_learner(config.learner, base)
    learner = _call_learner(config.learner, factory, learner_kwargs(config.learner, factory, config.learner_args))
    for method in ("train", "evaluate", "get_weights", "set_weights"):
        if not callable(getattr(learner, method, None)):
            raise ConfigError(
                "learner", f"{config.learner} returned {type(learner).__name__} without {method}(); "
                "return a p2pfl.TorchLearner or another Learner"
            )
    if isinstance(learner, TorchLearner):  # the schedule in node.toml wins
        learner.local_epochs = config.local_epochs
        learner.local_steps = config.local_steps or None
    if config.metrics:
        _use_metrics(config, learner)
    return learner


def _use_metrics(config: OrgNodeConfig, learner: Learner) -> None:
    """Add node.toml's ``metrics`` to the learner's own, refusing binary ones on a
    multi-class model before the first round (one forward pass tells the classes)."""
    if not isinstance(learner, TorchLearner):
        raise ConfigError(
            "metrics", f"{config.learner} returned {type(learner).__name__}, which p2pfl cannot add metrics to: "
            "return a p2pfl.TorchLearner, or compute them in its evaluate() (EvalResult.metrics)"
        )
    metrics = {**learner.metrics, **resolve_metrics(config.metrics)}
    try:
        classes = learner.output_classes()
    except Exception as exc:  # the organisation's model or data failing on its first batch
        raise ConfigError("learner", f"{config.learner}: evaluating one test batch failed: {type(exc).__name__}: {exc}") from exc
    check_metrics(metrics, classes, f"{config.learner}'s model")
    learner.metrics = metrics


def import_learner(spec: str, base: Path) -> Callable[..., Any]:
    """The function ``module:function`` names, with ``base`` (node.toml's folder) importable."""
    module_name, _, function_name = spec.partition(":")
    folder = str(base.resolve())  # absolute: the node may run from any working directory
    if folder in sys.path:
        sys.path.remove(folder)
    sys.path.insert(0, folder)  # first, so a same-named module elsewhere cannot shadow it
    importlib.invalidate_caches()  # the module may have been written after the interpreter started
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is None or not _is_package_of(exc.name, module_name):
            raise _import_failed(module_name, exc) from exc
        file = module_name.replace(".", "/") + ".py"
        raise ConfigError(
            "learner", f"cannot import {module_name!r} for {spec}: put {file} next to node.toml in {folder}, "
            "or install it / add its folder to PYTHONPATH"
        ) from None
    except Exception as exc:  # the module's own code failed while importing
        raise _import_failed(module_name, exc) from exc
    factory = getattr(module, function_name, None)
    if not callable(factory):
        raise ConfigError(
            "learner", f"{module_name} ({getattr(module, '__file__', '?')}) has no function {function_name!r}: "
            "fix the name after ':' in learner"
        )
    return factory


def _is_package_of(missing: str, module_name: str) -> bool:
    """Whether the missing module is ``module_name`` itself or one of its parent packages."""
    return module_name == missing or module_name.startswith(missing + ".")


def _import_failed(module_name: str, exc: BaseException) -> ConfigError:
    log.debug("importing %s failed", module_name, exc_info=exc)
    return ConfigError("learner", f"importing {module_name} failed: {type(exc).__name__}: {exc}")


def learner_kwargs(spec: str, factory: Callable[..., Any], args: Mapping[str, Any]) -> dict[str, Any]:
    """``args`` checked against the function's signature; ``index`` dropped if it is not taken.

    Raises:
        ConfigError: ``learner_args`` names an argument the function does not take, or
            leaves out one it requires.
    """
    kwargs = dict(args)
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):  # some builtins have none: let the call decide
        return kwargs
    if "index" in kwargs and not _accepts(signature, "index"):
        # init writes every member's position; a learner that does not ask for it has no use for it
        del kwargs["index"]
    try:
        signature.bind(**kwargs)
    except TypeError:
        raise ConfigError("learner_args", _mismatch(spec, signature, kwargs)) from None
    return kwargs


def _accepts(signature: inspect.Signature, name: str) -> bool:
    parameter = signature.parameters.get(name)
    if parameter is not None:
        return parameter.kind in (parameter.POSITIONAL_OR_KEYWORD, parameter.KEYWORD_ONLY)
    return any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values())


def _mismatch(spec: str, signature: inspect.Signature, kwargs: Mapping[str, Any]) -> str:
    """What is wrong between learner_args and the signature, and what the function takes."""
    unexpected = [name for name in kwargs if not _accepts(signature, name)]
    required = [
        p for p in signature.parameters.values()
        if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    ]
    # learner_args are keywords: a positional-only parameter can never be given
    missing = [p.name for p in required if p.kind is p.POSITIONAL_ONLY or p.name not in kwargs]
    problems = []
    if unexpected:
        problems.append(f"does not take {', '.join(unexpected)}")
    if missing:
        problems.append(f"requires {', '.join(missing)}, which learner_args does not give as keywords")
    shown = signature.replace(return_annotation=inspect.Signature.empty)
    return (
        f"{spec}{shown} {' and '.join(problems) or 'cannot be called with these arguments'} "
        f"(learner_args has {', '.join(kwargs) or 'nothing'}): make learner_args in node.toml "
        "(or the description's [training]) match the function's arguments"
    )


def _call_learner(spec: str, factory: Callable[..., Any], kwargs: Mapping[str, Any]) -> Any:
    """``factory(**kwargs)``; the organisation's own code failing is a configuration error."""
    try:
        return factory(**kwargs)
    except P2PFLError:
        raise  # already names its field and the fix (e.g. the bundled learner's index)
    except Exception as exc:
        log.debug("%s(...) raised", spec, exc_info=exc)  # the traceback, for --log-level debug
        raise ConfigError("learner", f"{spec}(...) failed: {type(exc).__name__}: {exc}") from exc
