"""Package hygiene: no import circle (function-level imports included),
and deprecations from our code or our stack fail the tests."""

import ast
import os

PACKAGE = 'densenet_flax'
ROOT = os.path.join(os.path.dirname(os.path.dirname(__file__)), PACKAGE)


def modules() -> dict[str, str]:
  """Dotted module name -> file, for every module of the package."""
  found = {}
  for directory, _, names in os.walk(ROOT):
    for name in names:
      if name.endswith('.py'):
        path = os.path.join(directory, name)
        parts = os.path.relpath(path, os.path.dirname(ROOT))[:-3].split(os.sep)
        if parts[-1] == '__init__':
          parts = parts[:-1]
        found['.'.join(parts)] = path
  return found


def imports(path: str, known: set[str]) -> set[str]:
  """The package modules that a file imports anywhere in it."""
  used = set()
  for node in ast.walk(ast.parse(open(path).read(), path)):
    if isinstance(node, ast.Import):
      used |= {alias.name for alias in node.names if alias.name in known}
    elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
      # `from package import module` uses the module; the package itself
      # only when a name other than a module is taken from it.
      names = [f'{node.module}.{alias.name}' for alias in node.names]
      used |= {name for name in names if name in known}
      if node.module in known and not all(name in known for name in names):
        used.add(node.module)
  return used


def cycle(graph: dict[str, set[str]]) -> list[str] | None:
  """One circle of the graph as a path of modules, or None."""
  state, stack = {}, []

  def visit(module):
    state[module] = 'open'
    stack.append(module)
    for used in sorted(graph[module]):
      if state.get(used) == 'open':
        return stack[stack.index(used) :] + [used]
      if used not in state:
        found = visit(used)
        if found:
          return found
    stack.pop()
    state[module] = 'done'
    return None

  for module in sorted(graph):
    if module not in state:
      found = visit(module)
      if found:
        return found
  return None


def test_the_package_has_no_import_circle():
  files = modules()
  # A package's own __init__ is where `from densenet_flax import x` starts,
  # not a module that uses x.
  graph = {
    name: imports(path, set(files)) - {name, PACKAGE}
    for name, path in files.items()
  }
  found = cycle(graph)
  assert found is None, 'import circle: ' + ' -> '.join(found)


def test_config_imports_nothing_from_the_package():
  files = modules()
  assert imports(files[f'{PACKAGE}.config_keys'], set(files)) == set()


def test_the_walk_finds_a_circle():
  assert cycle({'a': {'b'}, 'b': {'c'}, 'c': {'a'}}) == ['a', 'b', 'c', 'a']
  assert cycle({'a': {'b'}, 'b': set()}) is None


def test_a_deprecation_raised_from_our_code_fails_the_test():
  """pyproject.toml's filterwarnings: a DeprecationWarning attributed to a
  module of the package (or of JAX, Flax, Optax, Orbax) is an error."""
  import warnings

  import pytest

  for module in ('densenet_flax.models', 'jax._src.api', 'orbax.checkpoint'):
    with pytest.raises(DeprecationWarning, match='old'):
      warnings.warn_explicit(
        'old', DeprecationWarning, 'x.py', 1, module=module
      )
