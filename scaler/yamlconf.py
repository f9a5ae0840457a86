"""Load YAML files and validate them with pydantic, reporting every problem as FILE:LINE:COL.

ruamel.yaml's round-trip loader keeps the position of every key and item, so a pydantic error
location such as ("pools", "web", "rules", 0, "for") can be turned back into the line an operator
has to fix. Nothing is half-applied: the caller gets a validated model or a ConfigError.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq, merge_attrib
from ruamel.yaml.error import MarkedYAMLError

from scaler.errors import ConfigError

M = TypeVar("M", bound=BaseModel)


def load(path: Path) -> Any:
    """Parse one YAML file; syntax errors become a ConfigError with the position."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror or exc}"]) from exc
    yaml = YAML(typ="rt")
    try:
        return yaml.load(text)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise ConfigError([f"{where}: YAML syntax: {exc.problem}"]) from exc


def _key_position(node: CommentedMap, key: Any) -> tuple[int, int]:
    """(line, col), 0-based, where `key` is written: in `node`, or, for a key merged in with
    `<<: *anchor`, in the anchored mapping (the line to fix)."""
    if key in node.lc.data:
        line, col = node.lc.key(key)
        return line, col
    for merged in getattr(node, merge_attrib, []):
        if isinstance(merged, CommentedMap) and key in merged:
            return _key_position(merged, key)
    return node.lc.line, node.lc.col


def position(doc: Any, loc: Sequence[str | int]) -> tuple[int, int, str]:
    """(line, col, key path) of the deepest node of `loc` that exists in `doc` (1-based)."""
    line, col = 1, 1
    node = doc
    found: list[str] = []
    for part in loc:
        if isinstance(node, CommentedMap) and part in node:
            ln, cl = _key_position(node, part)
            line, col = ln + 1, cl + 1
            node = node[part]
        elif isinstance(node, CommentedSeq) and isinstance(part, int) and 0 <= part < len(node):
            ln, cl = node.lc.item(part)
            line, col = ln + 1, cl + 1
            node = node[part]
        elif isinstance(part, str) and part[:1].isupper():
            continue    # pydantic tags union branches and validators with class names: skip them
        else:
            found.append(str(part))
            break
        found.append(str(part))
    return line, col, ".".join(found)


def problems_of(exc: ValidationError, path: Path, doc: Any, prefix: Sequence[str | int] = ()) -> list[str]:
    """Every error of `exc` as "FILE:LINE:COL: key.path: message" (pydantic reports aliases)."""
    out = []
    for err in exc.errors():
        loc = [*prefix, *err["loc"]]
        line, col, _ = position(doc, loc)
        key = ".".join(str(p) for p in loc if not (isinstance(p, str) and p[:1].isupper())) or "(top)"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        elif err["type"] == "missing":
            msg = "required key is missing"
        out.append(f"{path}:{line}:{col}: {key}: {msg}")
    return out


def validate(model: type[M], path: Path, doc: Any | None = None, *,
             context: dict[str, Any] | None = None) -> M:
    """Validate the YAML document at `path` (or the already loaded `doc`) as `model`."""
    if doc is None:
        doc = load(path)
    if doc is None:
        raise ConfigError([f"{path}:1:1: the file is empty"])
    try:
        return model.model_validate(doc, context=context)
    except ValidationError as exc:
        raise ConfigError(problems_of(exc, path, doc)) from exc
