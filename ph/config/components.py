"""Name -> class registries, user Python files, and building components from specs.

A config reaches code only through registered names and the user files it names;
nothing here imports a dotted path or looks up an attribute named by a config.
"""
from __future__ import annotations

import hashlib
import inspect
import sys
import threading
import types
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from .schema import component_args
from ..errors import ConfigError, did_you_mean


class ComponentRegistry:
    """Components of one kind, found by name; each name may be registered once."""

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, Any] = {}

    def register(self, *names: str) -> Callable:
        """Decorator adding a class (or factory) under the given names (first = canonical)."""
        def add(obj):
            for name in names or (obj.__name__,):
                self.add(name, obj)
            return obj
        return add

    def add(self, name: str, obj: Any) -> None:
        if name in self._items:
            raise ValueError(f"{self.kind} '{name}' is already registered "
                             f"(by {self._items[name]!r}); pick another name")
        self._items[name] = obj

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        return name in self._items

    def get(self, name: str, path: str) -> Any:
        """The component registered as `name`; `path` is the config key for the message."""
        if name not in self._items:
            raise ConfigError(f"{path}: unknown {self.kind} '{name}'{did_you_mean(name, self._items)}; "
                              f"known: {', '.join(self.names())}")
        return self._items[name]


MODELS = ComponentRegistry("model")
PREPROCESSORS = ComponentRegistry("pre-processor")
POSTPROCESSORS = ComponentRegistry("post-processor")
DATALOADERS = ComponentRegistry("data loader")
LOSSES = ComponentRegistry("loss")
METRICS = ComponentRegistry("metric")


@dataclass(frozen=True)
class UserComponent:
    """Registered under `Custom*` names: the class comes from the user's Python file.

    Args `python_file` and `module_name` pick the class; every other arg goes to the
    user class's constructor.
    """

    kind: str


for _registry in (MODELS, PREPROCESSORS, POSTPROCESSORS):
    _name = {"model": "CustomModel"}.get(_registry.kind, "CustomProcessor")
    _registry.add(_name, UserComponent(_registry.kind))


@dataclass
class UserCode:
    """The user Python sources a head may run, keyed by the `python_file` string of its config.

    Sources are loaded from text already read (and checked against the path policy) by
    the caller, so a stored head runs exactly the code it was created with.
    """

    sources: dict[str, str] = field(default_factory=dict)

    def load_class(self, python_file: Any, module_name: Any, path: str) -> type:
        key = python_file or ""
        if key not in self.sources:
            given = f"'{python_file}'" if python_file else "no python_file"
            raise ConfigError(f"{path}.args.python_file: {given} has no source; give the path of "
                              "your Python file, or pass its source to create_head_list(python=...)")
        if not isinstance(module_name, str) or not module_name:
            raise ConfigError(f"{path}.args.module_name: name the class to use from "
                              f"'{python_file}', got {module_name!r}")
        module = load_source_module(self.sources[key], str(python_file or "user_code.py"))
        classes = sorted(n for n, v in vars(module).items()
                         if isinstance(v, type) and v.__module__ == module.__name__)
        cls = module.__dict__.get(module_name)
        if module_name not in classes:  # only classes the file defines, not ones it imports
            raise ConfigError(f"{path}.args.module_name: '{python_file}' has no class "
                              f"'{module_name}'{did_you_mean(module_name, classes)}; "
                              f"classes there: {', '.join(classes) or 'none'}")
        return cls


_modules: dict[str, types.ModuleType] = {}
_modules_lock = threading.Lock()


def load_source_module(source: str, filename: str) -> types.ModuleType:
    """Execute user source once per distinct text and return it as a module."""
    digest = hashlib.sha256(source.encode("utf-8")).hexdigest()[:16]
    with _modules_lock:
        if digest not in _modules:
            module = types.ModuleType(f"ph_user_{digest}")
            module.__file__ = filename
            sys.modules[module.__name__] = module  # dataloader workers and pickling find it
            try:
                exec(compile(source, filename, "exec"), module.__dict__)
            except Exception as exc:
                del sys.modules[module.__name__]
                raise ConfigError(f"user file '{filename}' failed to load: "
                                  f"{type(exc).__name__}: {exc}") from exc
            _modules[digest] = module
        return _modules[digest]


def resolve(registry: ComponentRegistry, spec: Mapping, path: str, code: UserCode) -> tuple[Any, dict]:
    """(class, constructor args) for a `{type, args}` spec."""
    target = registry.get(spec["type"], f"{path}.type")
    args = component_args(spec)
    if isinstance(target, UserComponent):
        target = code.load_class(args.pop("python_file", None), args.pop("module_name", None), path)
    return target, args


def bind(cls: Any, args: Mapping, path: str, injected: Mapping | None = None) -> None:
    """Check that `cls(**args, **injected)` would accept the arguments, naming what it takes."""
    try:
        signature = inspect.signature(cls)
    except (TypeError, ValueError):
        return  # builtins without a signature: let construction report
    try:
        signature.bind(**args, **(injected or {}))
    except TypeError as exc:
        accepted = [p for p in signature.parameters if p not in (injected or {})
                    and signature.parameters[p].kind not in (inspect.Parameter.VAR_POSITIONAL,
                                                             inspect.Parameter.VAR_KEYWORD)]
        name = getattr(cls, "__name__", repr(cls))
        unknown = [k for k in args if k not in signature.parameters]
        hint = "".join(did_you_mean(k, accepted) for k in unknown[:1])
        raise ConfigError(f"{path}.args: {name} does not take these arguments ({exc}){hint}; "
                          f"it accepts: {', '.join(accepted) or 'no arguments'}") from None


def build(registry: ComponentRegistry, spec: Mapping, path: str, code: UserCode,
          injected: Mapping | None = None) -> Any:
    """Construct the component a spec names; every failure becomes a ConfigError at `path`."""
    cls, args = resolve(registry, spec, path, code)
    bind(cls, args, path, injected)
    return construct(cls, args, path, injected)


def construct(cls: Any, args: Mapping, path: str, injected: Mapping | None = None) -> Any:
    """`cls(**args, **injected)`, turning a constructor's exception into a ConfigError."""
    try:
        return cls(**args, **(injected or {}))
    except ConfigError:
        raise
    except Exception as exc:
        raise ConfigError(f"{path}: building {getattr(cls, '__name__', cls)} with args {dict(args)} "
                          f"failed: {type(exc).__name__}: {exc}") from exc


def problems_of(check: Callable[[], Any]) -> list[str]:
    """Run a check and return its ConfigError problems (empty when it passes)."""
    try:
        check()
    except ConfigError as exc:
        return exc.problems
    return []
