"""The command line's options, made from config fields (config.opt: the help text, the reason for the
default, the choices), so the command line and the configs cannot disagree; and the configs built back
from what was given (defaults < a TOML file's settings < the options on the command line)."""

from __future__ import annotations

import dataclasses

import click

from stdtrt.config import DistillConfig
from stdtrt.errors import StdtrtError


def _annotation(f) -> str:
    return f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))


def _kind(f) -> type:
    """The Python type of a field's values (bool, int, float, str; tuple for tuple fields)."""
    text = _annotation(f)
    for name, kind in (("tuple", tuple), ("bool", bool), ("int", int), ("float", float)):
        if text.startswith(name):
            return kind
    return str


def _item_kind(f) -> type:
    """For a tuple field: the type of its items."""
    return int if "tuple[int" in _annotation(f) else str


def _fields(cls, group: str | None):
    for f in dataclasses.fields(cls):
        meta = f.metadata
        if meta.get("cli") is False or (group != "*" and meta.get("group") not in (None, group)):
            continue
        yield f, meta, meta.get("flag") or "--" + f.name.replace("_", "-")


def ablations(cls, group: str | None = "*") -> str:
    """The epilog naming a command's comparison switches (hidden from its option list)."""
    names = []
    for _, meta, flag in _fields(cls, group):
        if meta.get("ablation"):
            choices = meta.get("choices")
            names.append(f"{flag} {'|'.join(choices)}" if choices else f"{flag}")
    if not names:
        return ""
    lines = "\n".join(f"  {name}" for name in names)
    return f"\b\nFor comparisons (the benchmarks' ablations, not for everyday use):\n{lines}"


def config_options(cls, group: str | None = "*"):
    """One click option per field of `cls` (default None: "not given"), help and default from the field.
    `group`: "*" every field; None only the fields without a group; a name: those and that group's.
    Ablation switches are hidden from the option list (`ablations` names them)."""

    def decorate(fn):
        for f, meta, flag in reversed(list(_fields(cls, group))):
            hidden = bool(meta.get("ablation"))
            names = [flag] + ([meta["short"]] if meta.get("short") else [])
            default = f.default if f.default not in (None, ()) else None
            help_text = meta.get("help", "")
            if default is not None and not isinstance(default, bool):
                help_text += f" [default: {default}]"
            kind = _kind(f)
            if kind is bool:
                on = flag.removeprefix("--")
                state = "on" if f.default else "off" if f.default is False else "auto"
                fn = click.option(
                    f"{flag}/--no-{on}", f.name, default=None, help=f"{help_text} [{state}]", hidden=hidden
                )(fn)
            elif kind is tuple:
                fn = click.option(
                    *names,
                    f.name,
                    multiple=True,
                    help=help_text + " (repeat or comma-separate)",
                    hidden=hidden,
                )(fn)
            else:
                choices = meta.get("choices")
                ptype = click.Choice(choices) if choices else kind
                fn = click.option(*names, f.name, type=ptype, default=None, help=help_text, hidden=hidden)(fn)
        return fn

    return decorate


def coerce(cls, key: str, value):
    """A setting converted to its field's type, or one clear line (a TOML string where a number belongs)."""
    f = {f.name: f for f in dataclasses.fields(cls)}[key]
    kind = _kind(f)
    try:
        if kind is tuple:
            items = value if isinstance(value, list | tuple) else [value]
            parts = [p for item in items for p in (item.split(",") if isinstance(item, str) else [item])]
            return tuple(_item_kind(f)(p) for p in parts if p != "")
        if kind is bool:
            if not isinstance(value, bool):
                raise TypeError
            return value
        if kind is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise TypeError
            return int(value)  # a str that is not an integer, a list, a table: ValueError or TypeError
        if kind is float:
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise TypeError
            return float(value)
        if not isinstance(value, str):
            raise TypeError
        return value
    except (TypeError, ValueError):
        name = "list of integers" if kind is tuple and _item_kind(f) is int else kind.__name__
        raise StdtrtError(f"setting {key.replace('_', '-')}: {value!r} is not a {name}") from None


def build_config(cls, given: dict, base: dict | None = None):
    """Defaults < `base` (a TOML file's settings) < the options given on the command line. A class with
    an `explicit` field learns which options were given (a bundle refuses those it contradicts)."""
    names = {f.name for f in dataclasses.fields(cls)}
    given = {k: v for k, v in given.items() if k in names and v not in (None, ())}
    merged = {**(base or {}), **given}
    values = {k: coerce(cls, k, v) for k, v in merged.items()}
    if "explicit" in names:
        values["explicit"] = tuple(sorted(given))
    return cls(**values)


def _load_toml(path: str) -> dict:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib
    try:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
    except OSError as exc:
        raise StdtrtError(f"cannot read config file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise StdtrtError(f"config file {path} is not valid TOML: {exc}") from None
    return {k.replace("-", "_"): v for k, v in raw.items()}


def build_distill_config(config_file: str | None, given: dict, resume: bool = False) -> DistillConfig:
    """Defaults < (with `resume`) the run's own saved config < the TOML file < options given on the command
    line: a resumed run keeps what it was started with (--model, --rho, ...) unless told otherwise."""
    names = {f.name for f in dataclasses.fields(DistillConfig)}
    base = _load_toml(config_file) if config_file else {}
    unknown = sorted(set(base) - names)
    if unknown:
        raise StdtrtError(f"unknown setting(s) in {config_file}: {', '.join(unknown)}")
    if resume:
        out = given.get("out") or base.get("out") or DistillConfig.__dataclass_fields__["out"].default
        saved = _saved_run(out)
        base = {**{k: v for k, v in saved.items() if k in names and v is not None}, **base}
    return build_config(DistillConfig, given, base)


def _saved_run(out: str) -> dict:
    """The resolved config a run folder holds (empty when there is none: the resume check says so)."""
    import json
    from pathlib import Path

    path = Path(out) / "config.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
