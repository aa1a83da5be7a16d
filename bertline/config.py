"""Load a pydantic config tree from YAML plus dotted command-line overrides (`--pairs.dupe_factor 5`).

pydantic validates; this module only merges the sources and turns a ValidationError into one sentence.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, TypeVar

import pydantic
import yaml

from bertline.errors import UserError

T = TypeVar("T", bound=pydantic.BaseModel)


class Section(pydantic.BaseModel):
    """Base of every config section: unknown keys are errors, values are checked on assignment."""

    model_config = pydantic.ConfigDict(extra="forbid", validate_assignment=True, frozen=False)


def parse_overrides(args: Iterable[str], model: type[pydantic.BaseModel]) -> tuple[dict[str, Any], list[str]]:
    """Split config overrides from the other arguments.

    An override is `--section.key VALUE` (or `=VALUE`) for a section of `model`, or `--key VALUE` for one of
    its top-level scalars such as `--seed 7`. Values stay text here; load_config types them against the
    field they set. Returns (dotted key → raw text, the other arguments in order).
    """
    sections = tuple(
        f"--{name}." for name, field in model.model_fields.items()
        if isinstance(field.annotation, type) and issubclass(field.annotation, pydantic.BaseModel)
    )
    scalars = {
        f"--{name}" for name, field in model.model_fields.items()
        if not (isinstance(field.annotation, type) and issubclass(field.annotation, pydantic.BaseModel))
    }
    overrides: dict[str, Any] = {}
    rest: list[str] = []
    items = list(args)
    i = 0
    while i < len(items):
        arg = items[i]
        flag = arg.split("=", 1)[0]
        if flag.startswith(sections) or flag in scalars:
            if "=" in arg:
                raw = arg.split("=", 1)[1]
            elif i + 1 < len(items):
                raw = items[i + 1]
                i += 1
            else:
                raise UserError(f"the override {arg} has no value; write {arg} VALUE or {arg}=VALUE")
            overrides[flag[2:]] = raw
        else:
            rest.append(arg)
        i += 1
    return overrides, rest


def _field_annotation(model: type[pydantic.BaseModel], dotted: str) -> Any:
    """The annotation of the field a dotted key names, or None when the key is unknown."""
    node: Any = model
    for part in dotted.split("."):
        if not (isinstance(node, type) and issubclass(node, pydantic.BaseModel)) or part not in node.model_fields:
            return None
        node = node.model_fields[part].annotation
    return node


def _typed(model: type[pydantic.BaseModel], dotted: str, raw: str) -> Any:
    """An override's text as a value: kept as text for string fields (so a path like `2024` or `@vocab`
    survives), parsed as YAML for the rest (`8`, `0.5`, `true`, `null`, `[a, b]`)."""
    annotation = _field_annotation(model, dotted)
    if annotation is str or annotation == (str | None):
        return None if annotation is not str and raw in ("null", "~") else raw
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError:
        raise UserError(f"the value {raw!r} of --{dotted} is not a valid number, boolean, list or text; quote or fix it") from None


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    node = tree
    *parents, leaf = dotted.split(".")
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise UserError(f"config key {dotted!r} cannot be set: {part!r} is a value, not a section")
        node = child
    node[leaf] = value


def _sentence(error: pydantic.ValidationError, source: str) -> str:
    first = error.errors()[0]
    key = ".".join(str(part) for part in first["loc"]) or "(root)"
    if first["type"] == "extra_forbidden":
        return f"unknown config key {key!r} in {source}; check the spelling against configs/ and docs"
    return f"config key {key!r} in {source}: {first['msg']} (got {first.get('input')!r})"


def load_config(model: type[T], path: str | Path | None, overrides: dict[str, Any]) -> T:
    """Read YAML at `path` (or start from defaults), apply dotted overrides, validate once."""
    tree: dict[str, Any] = {}
    source = "the defaults"
    if path is not None:
        source = str(path)
        try:
            loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise UserError(f"config file {path} does not exist; pass an existing YAML file to --config") from None
        except yaml.YAMLError as exc:
            raise UserError(f"config file {path} is not valid YAML ({exc.__class__.__name__}); fix its syntax") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise UserError(f"config file {path} must hold a mapping of sections, not a {type(loaded).__name__}")
        tree = loaded or {}
    for key, value in overrides.items():
        _set_dotted(tree, key, _typed(model, key, value) if isinstance(value, str) else value)
    if overrides:
        source += " with command-line overrides"
    try:
        return model.model_validate(tree)
    except pydantic.ValidationError as exc:
        raise UserError(_sentence(exc, source)) from None


def dump_config(config: pydantic.BaseModel) -> dict[str, Any]:
    """The resolved tree as plain JSON-able data (for manifests and run folders)."""
    return config.model_dump(mode="json")
