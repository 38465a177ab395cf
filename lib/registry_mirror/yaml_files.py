"""Strict YAML reading and one-line error messages for everything an operator writes by hand."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from .errors import ParameterError

# Field names whose values must never be echoed back in an error message.
_SECRET_WORDS = ("password", "secret", "token", "accesskey", "access_key", "secret_key")


class KeyedValueError(ValueError):
    """A check made on a whole section that is about one key in it: the error names that key.

    `loc` is relative to the section, e.g. ("on_failure",) or ("deny", 1).
    """

    def __init__(self, loc: str | tuple[str | int, ...], message: str) -> None:
        super().__init__(message)
        self.loc = (loc,) if isinstance(loc, str) else tuple(loc)


def one_line(text: str) -> str:
    """Error messages are one line: a value holding a newline must not break a log or a table row."""
    return "\\n".join(text.splitlines())


def read_yaml_mapping(path: Path, *, label: str) -> dict[str, Any]:
    """Load a YAML mapping; duplicate keys, syntax errors and non-mappings are ParameterErrors."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ParameterError(f"{label}: file not found") from None
    except (IsADirectoryError, PermissionError, UnicodeDecodeError) as exc:
        raise ParameterError(f"{label}: cannot be read ({exc.__class__.__name__})") from None
    try:
        data = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ParameterError(one_line(f"{label}: is not valid YAML{where}: {exc.problem}")) from None
    except yaml.YAMLError as exc:
        raise ParameterError(one_line(f"{label}: is not valid YAML: {exc}")) from None
    if data is None:
        raise ParameterError(f"{label}: is empty; it must hold a mapping of keys to values")
    if not isinstance(data, dict):
        raise ParameterError(f"{label}: must be a mapping of keys to values, not a {type(data).__name__}")
    return data


def describe_validation_error(exc: ValidationError, *, source: str, prefix: str = "", private: bool = False) -> str:
    """Turn pydantic's report into one sentence: '<source>: <key> <problem>[; and N more problems]'.

    `private`: never show a refused value (security rules); values under a `security_rules` key are
    never shown either.
    """
    problems = [_describe_one(err, prefix, private) for err in exc.errors(include_url=False)]
    first = problems[0]
    rest = len(problems) - 1
    more = f" (and {rest} more problem{'s' if rest > 1 else ''}: {'; '.join(problems[1:])})" if rest else ""
    return one_line(f"{source}: {first}{more}")


def dotted_key(loc: tuple[Any, ...], prefix: str = "") -> str:
    """('proxy', 'allow', 2) -> 'proxy.allow[2]'."""
    out = prefix
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def _describe_one(err: Any, prefix: str, private: bool = False) -> str:
    # Pydantic puts union branches and validator names into loc; they mean nothing to an operator.
    loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and ("[" in p or p.startswith("function-"))))
    original = (err.get("ctx") or {}).get("error")
    if isinstance(original, KeyedValueError):
        loc += original.loc
    key = dotted_key(loc, prefix)
    secret = private or "security_rules" in key or any(w in key.lower() for w in _SECRET_WORDS)
    kind = err["type"]
    if kind == "extra_forbidden":
        return f"unknown key '{key}'"
    if kind == "missing":
        return f"missing key '{key}'"
    message = str(err.get("msg", "is invalid"))
    for lead in ("Value error, ", "Assertion failed, "):
        message = message.removeprefix(lead)
    value = err.get("input")
    if secret and isinstance(value, str) and value:
        # A validator may quote the value it refused; under a secret's key that is the secret.
        message = message.replace(value, "<hidden>")
    shown = ""
    if kind not in ("value_error", "assertion_error") and not secret:
        if not isinstance(value, (dict, list)):
            text = repr(value)
            shown = f" (got {text[:60]}{'...' if len(text) > 60 else ''})"
    return f"'{key}' {message[0].lower() + message[1:] if message else 'is invalid'}{shown}"


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys, which PyYAML would otherwise silently overwrite."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key '{key}'", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
