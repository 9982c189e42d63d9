"""A small declarative reader: TOML tables → frozen dataclasses, driven by type hints.

A section is a frozen dataclass whose fields are declared with `setting(default, lo, hi, …)`;
the field's type says how a TOML value is read (bool, int, float, str, `Literal[...]`, `Path`,
`X | None`, `tuple[X, ...]`, a port map `tuple[tuple[int, X], ...]`, a nested section, a table of
sections `Mapping[str, S]`, an array of tables `tuple[S, ...]`, or any type registered in
`converters` as a parser of strings). Each default is written once, in the field. A missing
nested table gets the field's default instance, and a partial one takes the keys it lacks from
that instance, so a section can carry different defaults in two places (`BackoffConfig` under
`[docker]` and `[kind]`); an absent table is read as an empty one, so its hook still runs.

Unknown keys are refused first (a misspelt key must not turn into a confusing later error);
then fields are read in order; then the class's optional `_check(values, reader)` hook runs
cross-field rules and may normalise values (`reader.root` holds the top-level values read so
far, `reader.options` what the caller knows beyond the file).
Every mistake is a `SchemaError(key, reason)` with the full dotted key; the caller adds the file.
Chosen over msgspec/pydantic: no import cost, no second set of types, and messages we own.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

Parser = Callable[[str, Mapping[str, Any]], Any]
"""A converter: the TOML string and the field's metadata → the value; ValueError with the reason."""


class SchemaError(Exception):
    def __init__(self, key: str, reason: str) -> None:
        self.key = key
        self.reason = reason
        super().__init__(f"{key}: {reason}")


class Invalid(Exception):
    """Raised by parse/check functions and `_check` hooks: `key` is relative to the section."""

    def __init__(self, key: str, reason: str) -> None:
        self.key = key
        self.reason = reason
        super().__init__(f"{key}: {reason}")


def setting(default: Any = dataclasses.MISSING, lo: float | None = None, hi: float | None = None, *,
            key: str | None = None, parse: Callable[[Any], Any] | None = None,
            check: Callable[[Any], str | None] | None = None, required: str = "is required",
            toml: bool = True, repr: bool = True, default_from: Callable[[Reader], Any] | None = None,
            none: str | None = None, **meta: Any) -> Any:
    """A field of a section. `lo`/`hi` bound numbers; `key` is the TOML name when it differs;
    `parse` turns the TOML string into the field's value (ValueError → error at this key);
    `check(value) → reason | None` is applied to the value (to each item of a tuple);
    `toml=False` fields are not read from the file (the hook or the caller fills them);
    `default_from(reader)` computes the value of a missing key from what was read before it
    (the dataclass default stays for code that builds the section itself); for an optional
    field, the string `none` (as well as "") reads as None."""
    md = dict(meta, lo=lo, hi=hi, key=key, parse=parse, check=check, required=required, toml=toml,
              default_from=default_from, none=none)
    if isinstance(default, list | dict | set):
        raise TypeError("use a tuple or a frozen default")
    if dataclasses.is_dataclass(default) or isinstance(default, Mapping):
        value = default
        return dataclasses.field(default_factory=lambda: value, metadata=md, repr=repr)
    return dataclasses.field(default=default, metadata=md, repr=repr)


def _kind(v: object) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list",
            dict: "a table"}.get(type(v), type(v).__name__)


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    h = _HINTS.get(cls)
    if h is None:
        h = _HINTS[cls] = typing.get_type_hints(cls)
    return h


def toml_keys(cls: type) -> dict[str, dataclasses.Field[Any]]:
    """TOML key → field, in declaration order."""
    return {f.metadata.get("key") or f.name: f for f in dataclasses.fields(cls)
            if f.metadata.get("toml", True)}


def _default(f: dataclasses.Field[Any], defaults: object | None) -> Any:
    if defaults is not None:
        return getattr(defaults, f.name)
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


class Reader:
    def __init__(self, *, base: Path, converters: Mapping[type, tuple[Parser, str]],
                 options: Mapping[str, Any] | None = None) -> None:
        self.base = base
        self.converters = converters
        self.options: Mapping[str, Any] = options or {}  # what hooks may ask beyond the file
        self.root: dict[str, Any] = {}  # the top-level values read so far

    def read(self, cls: type, data: Mapping[str, Any], prefix: str = "", *, defaults: object | None = None,
             extra: Mapping[str, Any] | None = None) -> Any:
        keys = toml_keys(cls)
        for k in data:
            if k not in keys:
                close = difflib.get_close_matches(k, list(keys), n=1, cutoff=0.6)
                hint = f" (did you mean {close[0]}?)" if close else f" (known: {', '.join(keys)})"
                raise SchemaError(_join(prefix, k), f"unknown key {k}{hint}")
        values: dict[str, Any] = dict(extra or {})
        if not prefix:
            self.root = values
        hints = _hints(cls)
        for k, f in keys.items():
            key = _join(prefix, k)
            fdefault = _default(f, defaults)
            raw = data.get(k)
            tp = hints[f.name]
            if raw is None and dataclasses.is_dataclass(tp) and tp not in self.converters:
                raw = {}  # an absent section is read as an empty one: its hook derives its defaults
            if raw is None:
                if f.metadata.get("default_from") is not None:
                    values[f.name] = f.metadata["default_from"](self)
                    continue
                if fdefault is dataclasses.MISSING:
                    raise SchemaError(key, f.metadata.get("required", "is required"))
                values[f.name] = fdefault
                continue
            md = f.metadata
            try:
                if md.get("parse") is not None:
                    v = md["parse"](self.value(str, raw, key, md, fdefault))
                else:
                    v = self.value(tp, raw, key, md, fdefault)
                if md.get("check") is not None and v is not None and not isinstance(v, tuple):
                    problem = md["check"](v)
                    if problem:
                        raise ValueError(problem)
            except ValueError as exc:
                raise SchemaError(key, str(exc)) from None
            except Invalid as exc:
                raise SchemaError(_join(key, exc.key), exc.reason) from None
            values[f.name] = v
        for f in dataclasses.fields(cls):
            if f.name not in values:
                values[f.name] = _default(f, defaults)
        check = getattr(cls, "_check", None)
        if check is not None:
            try:
                check(values, self)
            except Invalid as exc:
                raise SchemaError(_join(prefix, exc.key), exc.reason) from None
        return cls(**values)

    def value(self, tp: Any, raw: Any, key: str, md: Mapping[str, Any], default: Any) -> Any:
        origin = typing.get_origin(tp)
        args = typing.get_args(tp)
        if origin in (typing.Union, types.UnionType):
            inner = [a for a in args if a is not type(None)]
            if len(inner) == 1:
                if raw == "" or (md.get("none") is not None and raw == md["none"]):
                    return None
                return self.value(inner[0], raw, key, md, default)
        conv = self.converters.get(tp)
        if conv is not None:
            if not isinstance(raw, str):
                raise ValueError(f"must be a {conv[1]}, not {_kind(raw)}")
            return conv[0](raw, md)
        if tp is bool:
            if not isinstance(raw, bool):
                raise ValueError(f"must be true or false, not {_kind(raw)}")
            return raw
        if tp is int or tp is float:
            ok = isinstance(raw, int) if tp is int else isinstance(raw, int | float)
            if isinstance(raw, bool) or not ok:
                raise ValueError(f"must be {'an integer' if tp is int else 'a number'}, not {_kind(raw)}")
            v = tp(raw)
            lo, hi = md.get("lo"), md.get("hi")
            if (lo is not None and v < lo) or (hi is not None and v > hi):
                raise ValueError(f"{raw} is out of range {lo}..{hi}")
            return v
        if tp is str:
            if not isinstance(raw, str):
                raise ValueError(f"must be a string, not {_kind(raw)}")
            return raw
        if origin is typing.Literal:
            if not isinstance(raw, str):
                raise ValueError(f"must be a string, not {_kind(raw)}")
            if raw not in args:
                raise ValueError(f"{raw!r} is not one of {', '.join(args)}")
            return raw
        if tp is Path:
            if not isinstance(raw, str):
                raise ValueError(f"must be a path string, not {_kind(raw)}")
            if raw == "":
                return default
            p = Path(os.path.expanduser(raw))
            return p if p.is_absolute() else self.base / p
        if dataclasses.is_dataclass(tp) and isinstance(tp, type):
            if not isinstance(raw, dict):
                raise ValueError(f"must be a table, not {_kind(raw)}")
            return self.read(tp, raw, key, defaults=default if dataclasses.is_dataclass(default) else None)
        if origin in (Mapping, dict, typing.Mapping):
            if not isinstance(raw, dict):
                raise ValueError(f"must be a table, not {_kind(raw)}")
            return {k: self.value(args[1], v, _join(key, k), md, None) for k, v in raw.items()}
        if origin is tuple:
            return self._tuple(args, raw, key, md)
        raise TypeError(f"{key}: no reader for {tp!r}")  # a schema bug, not a user error

    def _tuple(self, args: tuple[Any, ...], raw: Any, key: str, md: Mapping[str, Any]) -> tuple[Any, ...]:
        item_tp = args[0]
        if typing.get_origin(item_tp) is tuple:  # a port map: { 4433 = "host:port" }
            if not isinstance(raw, dict):
                raise ValueError(f"must be a table of port = \"host:port\", not {_kind(raw)}")
            out: list[tuple[int, Any]] = []
            for k, item in raw.items():
                sub = _join(key, k)
                try:
                    port = int(k)
                except ValueError:
                    raise SchemaError(sub, f"{k!r} is not a port number") from None
                if not 1 <= port <= 65535:
                    raise SchemaError(sub, f"port {port} is out of range 1..65535")
                out.append((port, self._item(typing.get_args(item_tp)[1], item, sub, md)))
            return tuple(sorted(out))
        if isinstance(raw, str) and md.get("split"):
            raw = raw.split()
        elif isinstance(raw, str) and not md.get("list_only"):
            raw = [raw]
        if not isinstance(raw, list):
            what = self.converters[item_tp][1] + "s" if item_tp in self.converters else "values"
            raise ValueError(md.get("expect") or f"must be a list of {what}, not {_kind(raw)}")
        return tuple(self._item(item_tp, item, f"{key}[{i}]", md) for i, item in enumerate(raw))

    def _item(self, tp: Any, raw: Any, key: str, md: Mapping[str, Any]) -> Any:
        try:
            v = self.value(tp, raw, key, md, None)
            if md.get("check") is not None:
                problem = md["check"](v)
                if problem:
                    raise ValueError(problem)
            return v
        except ValueError as exc:
            raise SchemaError(key, str(exc)) from None


def _join(prefix: str, key: str) -> str:
    if not prefix:
        return key
    return f"{prefix}.{key}" if not key.startswith("[") else prefix + key
