"""Imports every gpt2jax module after `pip install -e .` alone (no extras installed).

A module may fail only with a ModuleNotFoundError that names an extra declared in pyproject.toml
(`pip install -e ".[eval]"`): an optional backend. Any other failure is a missing core
dependency, and exits non-zero.
"""

import importlib
import pkgutil
import re
import sys
import tomllib

import gpt2jax

with open("pyproject.toml", "rb") as f:
    extras = set(tomllib.load(f)["project"]["optional-dependencies"])
problems = []
for module in pkgutil.walk_packages(gpt2jax.__path__, "gpt2jax."):
    try:
        importlib.import_module(module.name)
    except ModuleNotFoundError as e:
        named = set(re.findall(r"\.\[(\w+)\]", str(e)))
        if named and named <= extras:
            print(f"CI: {module.name} needs the {sorted(named)} extra ({e.name} not installed)")
        else:
            problems.append(f"{module.name}: {e}")
if problems:
    sys.exit("CI: with only `pip install -e .` these modules do not import (declare the "
             "package in pyproject.toml, or name its extra in the error):\n" + "\n".join(problems))
print("CI: every gpt2jax module imports with the core install")
