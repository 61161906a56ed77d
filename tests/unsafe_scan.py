"""An AST scan for code that can deserialise data unsafely (run code hidden in a file).

Names are resolved through the module's imports, so aliases do not hide a call:
`import pickle as p; p.loads(b)`, `from pickle import loads; loads(b)`,
`__import__("pickle").loads(b)` and `from torch import load; load(f)` all resolve to the
real function. Imports are collected from the whole file (function-local ones too), which
over-approximates scopes: a false alarm is possible, a miss through an alias is not.

What is flagged (each finding is a short string naming the call):
- any attribute of pickle / _pickle / cPickle / dill / cloudpickle / marshal / shelve /
  joblib other than the writing half (`dump`, `dumps`, `Pickler`, protocol constants,
  exception classes): `load`, `loads`, `Unpickler`, `shelve.open`, `pickle._loads`, ...;
  also one of these modules used as a plain value (`f(pickle)`, `getattr(pickle, name)`),
  since where it goes cannot be followed;
- `torch.load` without a literal `weights_only=True` (or passed around uncalled);
- `numpy.load` with `allow_pickle` set to anything but a literal False, or `**kwargs`;
- `pandas.read_pickle`; `yaml.load` / `yaml.load_all` without a Safe/Base loader,
  `yaml.unsafe_load*`, `yaml.full_load*`;
- `eval` / `exec` (builtins);
- `__import__` / `importlib.import_module` of one of the modules above, or of a computed
  name (a variable), except an f-string whose literal prefix is a dotted package name.
"""

from __future__ import annotations

import ast

UNSAFE_MODULES = frozenset({"pickle", "_pickle", "cPickle", "dill", "cloudpickle", "marshal",
                            "shelve", "joblib"})
# The writing half of those modules: nothing here reads data.
SAFE_ATTRIBUTES = frozenset({"dump", "dumps", "Pickler", "HIGHEST_PROTOCOL",
                             "DEFAULT_PROTOCOL", "PickleError", "PicklingError",
                             "UnpicklingError", "PickleBuffer", "version"})
DYNAMIC_IMPORTS = frozenset({"__import__", "builtins.__import__", "importlib.import_module",
                             "importlib.__import__"})
SAFE_YAML_LOADERS = ("SafeLoader", "CSafeLoader", "BaseLoader", "CBaseLoader")


def import_aliases(tree: ast.AST) -> dict[str, str]:
    """Local name -> dotted name it stands for, from every import in the tree.

    `import a.b` binds `a` -> `a`; `import a.b as c` binds `c` -> `a.b`;
    `from a import b as c` binds `c` -> `a.b`. Relative imports keep their dots.
    """
    aliases = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.asname:
                    aliases[a.asname] = a.name
                else:
                    top = a.name.split(".")[0]
                    aliases[top] = top
        elif isinstance(node, ast.ImportFrom):
            base = "." * node.level + (node.module or "")
            for a in node.names:
                aliases[a.asname or a.name] = f"{base}.{a.name}" if node.module else base + a.name
    return aliases


def _literal_module(call: ast.Call) -> str | None:
    """The module a dynamic-import call names when its first argument is a literal."""
    if call.args and isinstance(call.args[0], ast.Constant) \
            and isinstance(call.args[0].value, str):
        return call.args[0].value
    return None


def resolve(node: ast.AST, aliases: dict[str, str]) -> str | None:
    """The dotted name an expression stands for (`p.loads` -> `pickle.loads`), or None.

    Unimported names stay as written (`eval`, `np.load` in a snippet without imports).
    `__import__("m").x` resolves to `m.x`.
    """
    if isinstance(node, ast.Name):
        return aliases.get(node.id, node.id)
    if isinstance(node, ast.Attribute):
        base = resolve(node.value, aliases)
        return None if base is None else f"{base}.{node.attr}"
    if isinstance(node, ast.Call) and resolve(node.func, aliases) in DYNAMIC_IMPORTS:
        return _literal_module(node)
    return None


def _top(name: str) -> str:
    return name.split(".")[0]


def _unsafe_module_member(name: str) -> bool:
    """`pickle.loads` yes, `pickle.dumps` no; `pickle` alone is handled by the caller."""
    parts = name.split(".")
    return parts[0] in UNSAFE_MODULES and len(parts) > 1 and parts[1] not in SAFE_ATTRIBUTES


def _keyword(call: ast.Call, name: str) -> ast.AST | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def _has_star_kwargs(call: ast.Call) -> bool:
    return any(k.arg is None for k in call.keywords)


def _is_literal(node: ast.AST | None, value) -> bool:
    return isinstance(node, ast.Constant) and node.value is value


def _check_call(call: ast.Call, name: str, aliases: dict[str, str]) -> str | None:
    """A finding for a call of the resolved function `name`, or None if it is safe."""
    if name in ("torch.load", "torch.serialization.load"):
        if not _is_literal(_keyword(call, "weights_only"), True):
            return f"{name} without weights_only=True"
    elif name in ("numpy.load", "np.load"):
        allow = _keyword(call, "allow_pickle")
        if _has_star_kwargs(call) or not (allow is None or _is_literal(allow, False)):
            return f"{name}(allow_pickle=...)"
    elif name in ("yaml.load", "yaml.load_all"):
        loader = _keyword(call, "Loader") or (call.args[1] if len(call.args) > 1 else None)
        loader_name = None if loader is None else resolve(loader, aliases)
        if not (loader_name or "").endswith(SAFE_YAML_LOADERS):
            return f"{name} without a safe Loader"
    elif name in ("yaml.unsafe_load", "yaml.unsafe_load_all", "yaml.full_load",
                  "yaml.full_load_all", "pandas.read_pickle", "pd.read_pickle"):
        return name
    elif name in ("eval", "exec", "builtins.eval", "builtins.exec"):
        return name
    elif name in DYNAMIC_IMPORTS:
        return _check_dynamic_import(call, name)
    return None


def _check_dynamic_import(call: ast.Call, name: str) -> str | None:
    module = _literal_module(call)
    if module is not None:
        return f"{name}({module!r})" if _top(module) in UNSAFE_MODULES else None
    arg = call.args[0] if call.args else None
    if isinstance(arg, ast.JoinedStr) and arg.values and isinstance(arg.values[0], ast.Constant):
        prefix = str(arg.values[0].value)
        if "." in prefix and _top(prefix) and _top(prefix) not in UNSAFE_MODULES:
            return None  # f"configs.{name}": a submodule of a named package
    return f"{name} of a computed name"


def unsafe_calls(source: str) -> list[str]:
    """Every finding in `source` (see the module docstring), in source order."""
    return [finding for _, finding in scan(source)]


def scan(source: str) -> list[tuple[int, str]]:
    """(line number, finding) of every finding in `source`, in source order."""
    tree = ast.parse(source)
    aliases = import_aliases(tree)
    found: list[tuple[int, int, str]] = []
    called, attribute_bases, imported = set(), set(), []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            called.add(id(node.func))
            name = resolve(node.func, aliases)
            if name == "getattr" and node.args:
                attribute_bases.add(id(node.args[0]))
                target = resolve(node.args[0], aliases)
                attr = node.args[1] if len(node.args) > 1 else None
                if target in UNSAFE_MODULES and not (
                        isinstance(attr, ast.Constant) and attr.value in SAFE_ATTRIBUTES):
                    found.append((node.lineno, node.col_offset, f"getattr({target}, ...)"))
            finding = None if name is None else _check_call(node, name, aliases)
            if finding:
                found.append((node.lineno, node.col_offset, finding))
        elif isinstance(node, ast.Attribute):
            attribute_bases.add(id(node.value))
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            imported += [(node, f"{node.module}.{a.name}") for a in node.names]
    for node, name in imported:  # `from pickle import loads` is flagged where it is imported
        if _unsafe_module_member(name):
            found.append((node.lineno, node.col_offset, f"from-import of {name}"))
    for node in ast.walk(tree):
        if not isinstance(node, (ast.Name, ast.Attribute)) or not isinstance(node.ctx, ast.Load):
            continue
        name = resolve(node, aliases)
        if name is None or id(node) in attribute_bases:
            continue  # the base of `pickle.loads` is judged as `pickle.loads`
        if _unsafe_module_member(name):
            found.append((node.lineno, node.col_offset, name))
        elif name in UNSAFE_MODULES:
            found.append((node.lineno, node.col_offset, f"{name} used as a value"))
        elif name in ("torch.load", "torch.serialization.load") and id(node) not in called:
            found.append((node.lineno, node.col_offset, f"{name} passed uncalled"))
    return [(line, f) for line, _, f in sorted(set(found))]
