"""Every scheme edgecc can run, by name, and the one way to build a plan: `build_plan(name, N, K, **options)`,
used by `edgecc master`, `edgecc serve`, scenarios, `edgecc eval` and the benchmarks.

Schemes come from three places, listed in this order: the built-in ones (schemes/builtin.py, in
their declared order), those registered in this process with `register(SchemeDef(...))`, and
those other packages declare in the `edgecc.schemes` entry-point group, e.g. in pyproject.toml:

    [project.entry-points."edgecc.schemes"]
    sum-code = "sumcode.scheme:SCHEME"       # a schemes.base.SchemeDef named "sum-code"

Listing names reads only the installed distributions' metadata; an entry point is imported when its
scheme is first asked for, and a built-in builder when its first plan is built, so reading the
registry (scenario files are validated against it) imports no torch.

Options: each scheme declares its own (SchemeDef.options). The builder takes only those: an option
the scheme does not declare is an error naming the ones it does, and every value is parsed and
checked before anything is built. N and K belong to every run: K is given, or fixed by the scheme's
options (an AICC model's K), or DEFAULT_K.
"""

from __future__ import annotations

import importlib
import logging
import sys
from importlib.metadata import EntryPoint, entry_points
from typing import Any, Callable, Mapping

from ..errors import ConfigError
from ..protocol.messages import Configure
from .base import PLAN_MEMBERS, Plan, SchemeDef
from .builtin import BASELINE, BUILTIN, DEFAULT_SCHEMES  # noqa: F401  (BASELINE, DEFAULT_SCHEMES: part of this module's API)

log = logging.getLogger("edgecc.schemes")

ENTRY_POINT_GROUP = "edgecc.schemes"
DEFAULT_K = 2  # images per group when neither the run nor a scheme's model fixes it (the shipped model's K)
RESERVED = ("N", "K")  # every run's own parameters: no scheme option may take these names

_builtin = {s.name: s for s in BUILTIN}
_registered: dict[str, SchemeDef] = {}
_loaded: dict[str, tuple[str, SchemeDef]] = {}  # entry points already imported: name -> (entry point's value, scheme)
_scan: tuple[tuple[str, ...], dict[str, EntryPoint]] | None = None  # (sys.path, entry points) of the last scan


def _check_def(scheme: Any, where: str) -> SchemeDef:
    if not isinstance(scheme, SchemeDef):
        raise ConfigError(f"{where}: a scheme is declared by an edgecc.schemes.base.SchemeDef, got {type(scheme).__name__}")
    if not scheme.name or not scheme.name.isascii() or len(scheme.name) > 64 or not scheme.name.replace("-", "").replace("_", "").isalnum():
        raise ConfigError(f"{where}: a scheme name is 1 to 64 letters, digits, '-' or '_', got {scheme.name!r}")
    names = [o.name for o in scheme.options]
    if len(set(names)) != len(names) or set(names) & set(RESERVED) or not all(n.isidentifier() for n in names):
        raise ConfigError(f"{where}: scheme {scheme.name!r} declares options {names}: each once, a Python "
                          f"identifier (the builder takes them as keywords), none of {RESERVED}")
    return scheme


def register(scheme: SchemeDef, *, replace: bool = False) -> SchemeDef:
    """Make `scheme` available by its name in this process. A built-in scheme cannot be replaced; a
    registered or entry-point one only with `replace=True`."""
    _check_def(scheme, "register()")
    if scheme.name in _builtin:
        raise ConfigError(f"register(): {scheme.name!r} is a built-in scheme")
    if not replace and (scheme.name in _registered or scheme.name in _entry_points()):
        raise ConfigError(f"register(): a scheme {scheme.name!r} is already registered (replace=True replaces it)")
    _registered[scheme.name] = scheme
    return scheme


def unregister(name: str) -> None:
    """Forget a scheme `register()` added (nothing if there is none)."""
    _registered.pop(name, None)


def _entry_points() -> dict[str, EntryPoint]:
    """The `edgecc.schemes` entry points of the distributions on sys.path, by name (rescanned when sys.path
    changes). A name that is built in stays built in: the entry point is left out, with a warning."""
    global _scan
    key = tuple(sys.path)
    if _scan is None or _scan[0] != key:
        found: dict[str, EntryPoint] = {}
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            if ep.name in _builtin:
                log.warning("entry point %s = %s ignored: %r is a built-in scheme", ep.name, ep.value, ep.name)
            else:
                found.setdefault(ep.name, ep)  # the first on sys.path wins, as for imports
        _scan = (key, found)
    return _scan[1]


def names() -> tuple[str, ...]:
    """Every scheme's name: built-in (declared order), registered (in order), then entry points (by name)."""
    registered = [n for n in _registered if n not in _builtin]
    plugins = sorted(n for n in _entry_points() if n not in _builtin and n not in _registered)
    return (*_builtin, *registered, *plugins)


def get(name: str) -> SchemeDef:
    """The scheme called `name` (loading its entry point on first use), or ConfigError naming those there are."""
    if name in _builtin:
        return _builtin[name]
    if name in _registered:
        return _registered[name]
    ep = _entry_points().get(name)
    if ep is None:
        raise ConfigError(f"unknown scheme {name!r}; the schemes are {', '.join(names())}")
    if name in _loaded and _loaded[name][0] == ep.value:
        return _loaded[name][1]
    where = f"entry point {ep.name} = {ep.value}"
    try:
        scheme = ep.load()
    except Exception as e:  # a broken plugin is reported as the configuration error it is
        raise ConfigError(f"{where}: cannot load it: {type(e).__name__}: {e}") from e
    _check_def(scheme, where)
    if scheme.name != name:
        raise ConfigError(f"{where}: declares a scheme named {scheme.name!r}, not {name!r}")
    _loaded[name] = (ep.value, scheme)
    return scheme


def check_options(name: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """Every option of scheme `name`: those given, parsed and checked, and the defaults of the rest.
    ConfigError for an option the scheme does not declare, naming the ones it does."""
    scheme = get(name)
    declared = {o.name: o for o in scheme.options}
    unknown = sorted(set(options) - set(declared))
    if unknown:
        takes = f"its options are {', '.join(declared)}" if declared else "it takes none"
        raise ConfigError(f"scheme {name!r} has no option{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; {takes}")
    return {o.name: o.parse(options[o.name], name) if o.name in options else o.default for o in scheme.options}


def _resolve(ref: Callable | str, name: str, what: str) -> Callable:
    if callable(ref):
        return ref
    module, _, attr = ref.partition(":")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"scheme {name!r}: its {what} {ref!r} cannot be imported: {e}") from e


def group_size(name: str, options: Mapping[str, Any]) -> int | None:
    """The K scheme `name`'s options fix (its model's), or None when it takes any K. Reads no weights."""
    scheme = get(name)
    if scheme.group_size is None:
        return None
    return _resolve(scheme.group_size, name, "group_size")(check_options(name, options))


def run_group_size(choices: Mapping[str, Mapping[str, Any]], K: int | None = None) -> int:
    """The K of a run of several schemes ({name: options}): `K` when given, else the one the schemes'
    options fix (they must agree), else DEFAULT_K."""
    if K is not None:
        return K
    fixed = {name: k for name, opts in choices.items() if (k := group_size(name, opts)) is not None}
    if len(set(fixed.values())) > 1:
        raise ConfigError("the schemes' models group different numbers of images ("
                          + ", ".join(f"{n}: K={k}" for n, k in fixed.items()) + "); run them separately")
    return next(iter(fixed.values()), DEFAULT_K)


def run_image(choices: Mapping[str, Mapping[str, Any]]) -> tuple[int, int, int] | None:
    """The (C, H, W) every scheme of a run ({name: options}) classifies, from their model options' headers
    (read without torch); None when no scheme names a model. ConfigError when the models take different
    images: the schemes of one run classify the same images."""
    from ..modelfile import read_header
    from ..protocol.images import model_image

    images: dict[str, tuple[int, int, int]] = {}
    for name, options in choices.items():
        opts = check_options(name, options)
        for o in get(name).options:
            if o.model and opts.get(o.name) is not None:
                value = opts[o.name]
                try:
                    images[name] = model_image(value[1] if isinstance(value, tuple) else read_header(value))
                except ValueError as e:
                    raise ConfigError(f"scheme {name!r}: {e}") from None
    if len(set(images.values())) > 1:
        raise ConfigError("the schemes' models take different images ("
                          + ", ".join(f"{n}: {'×'.join(map(str, i))}" for n, i in images.items()) + "); run them separately")
    return next(iter(images.values()), None)


def build_plan(name: str, N: int, K: int | None = None, /, **options: Any) -> Plan:
    """The plan of scheme `name` for N workers and K images per group (None: see run_group_size), built
    from the scheme's own `options`. ConfigError for anything wrong with them, naming the scheme."""
    opts = check_options(name, options)
    if isinstance(N, bool) or not isinstance(N, int) or N < 0:
        raise ConfigError(f"a run's number of workers N must be an integer >= 0, got {N!r}")
    if K is None:
        K = run_group_size({name: options})
    elif isinstance(K, bool) or not isinstance(K, int) or K < 1:
        raise ConfigError(f"K (images per group) must be an integer >= 1, got {K!r}")
    build = _resolve(get(name).build, name, "builder")
    try:
        plan = build(N, K, **opts)
    except ConfigError:
        raise
    except ValueError as e:  # a plan's own argument checks
        raise ConfigError(f"scheme {name!r}: {e}") from e
    missing = [m for m in PLAN_MEMBERS if not hasattr(plan, m)]
    if missing:
        raise ConfigError(f"scheme {name!r} built a {type(plan).__name__} without {', '.join(missing)} "
                          "(the members of edgecc.schemes.base.Plan; a subclass of Plan has the optional ones)")
    if plan.name != name:  # what configure tells the workers, and what reports file it under
        raise ConfigError(f"scheme {name!r} built a plan named {plan.name!r}")
    if plan.K != K:
        raise ConfigError(f"scheme {name!r} built a plan for K={plan.K}, the run has K={K}")
    if not 0 <= plan.N <= N:
        raise ConfigError(f"scheme {name!r} built a plan for {plan.N} workers, the run has {N}")
    return plan


def scheme_for_model(kind: str) -> str:
    """The one scheme whose model is of `kind` (`edgecc master --scheme auto`), or ConfigError."""
    runs = [n for n in names() if kind in get(n).model_kinds]
    if len(runs) == 1:
        return runs[0]
    if not runs:
        raise ConfigError(f"no scheme runs a {kind!r} model")
    raise ConfigError(f"several schemes run a {kind!r} model ({', '.join(runs)}): choose one")


def configure_message(plan: Plan, index: int, arrays: dict | None, dataset: str | None = None) -> Configure:
    """The `configure` of worker `index` of any plan; `arrays` nil when the worker preloaded the bundle."""
    return Configure(index, plan.name, plan.scheme_params(index), plan.compute_spec(index).to_wire(), plan.wire_dtype,
                     plan.digest, arrays, dataset)
