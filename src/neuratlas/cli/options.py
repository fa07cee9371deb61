"""One option dialect for every ``neuratlas`` subcommand, read by one function (:func:`parse`).

A subcommand is a dataclass of its own options plus, optionally, the run-config sections it accepts.
Declaring one (the whole of what a new subcommand needs)::

    @dataclass
    class ExportOptions:
        \"\"\"Export CHECKPOINT for deployment.\"\"\"  # the --help description
        checkpoint: str = positional("a run folder or a .safetensors checkpoint")
        format: Literal["onnx", "torchscript"] = "onnx"  # what to write (--help lists the choices)
        out: str = "model.onnx"  # the file to write

    def register(sub):
        command(sub, "export", ExportOptions, cmd_export, help="export a checkpoint")

    def cmd_export(opts: ExportOptions, parsed: Parsed) -> int:
        ...

What every command then accepts, the same way:

- its own options, flat: ``--format onnx``; ``--max-new-tokens`` and ``--max_new_tokens`` are the same key;
  a bool may stand alone (``--bf16``); a list is comma-separated (``--split val,test``) or repeated.
- the sections it declares (``sections={"trainer": TrainerConfig, "data": None}``), dotted:
  ``--trainer.max_steps 5`` is checked here against the dataclass; a ``None`` section is a named spec whose
  keys its registry checks when it is built (``--data.root DIR``). ``sections`` may be a callable of the
  parsed own options, or of None in --help before they are known (``train``: the recipe's task owns more).
- ``plugin``: a callable of the parsed own options returning one more flat-options dataclass (``predict``:
  the checkpoint's task's ``PredictOptions``; ``bench``: the benchmark's options).
- ``--config FILE.yaml|json`` (own options at the top level, sections as nested mappings; the command line
  wins), ``--print-config [yaml|json]`` (the resolved options, readable back by ``--config``), and ``-h``/
  ``--help`` generated from the dataclasses: types, defaults, ``Literal`` choices and each field's comment.
- an unknown option is refused in one line that lists the valid ones.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import io
import json
import sys
import textwrap
import tokenize
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Literal, Union

from neuratlas.config import _is_number, _parse_sequence, coerce, field_types, to_dict, unknown_key_error
from neuratlas.errors import NeuratlasError

_BOOL_WORDS = {"1", "0", "true", "false", "yes", "no", "on", "off", "y", "n"}
_COMMON = ("--config", "--print-config", "--help")  # what every command takes besides its own options
Sections = Mapping[str, "type | None"]


def repeatable(help: str = "") -> Any:
    """A list field whose every occurrence is one item, never split at commas (``--stop 'a, b' --stop c``)."""
    return field(default_factory=list, metadata={"repeat": True, "help": help})


def device_option(default: str = "auto", what: str = "") -> Any:
    """``--device``, the same on every inference command: where the model runs and its inputs go (``what``
    says it where a command means something narrower, e.g. export's check)."""
    from neuratlas.device import DEVICE_HELP

    return field(default=default, metadata={"help": f"{what}: {DEVICE_HELP}" if what else DEVICE_HELP})


def positional(
    help: str = "", *, default: Any = dataclasses.MISSING, default_factory: Any = dataclasses.MISSING
) -> Any:
    """A field given by position (``neuratlas eval RUN``), not as ``--key``; a list-typed one takes every
    remaining positional argument. Without a default it is required."""
    return field(default=default, default_factory=default_factory, metadata={"positional": True, "help": help})


@dataclass
class Command:
    """What ``neuratlas NAME`` takes and does. ``run(opts, parsed)`` returns the exit status."""

    name: str
    options: type
    run: Callable[[Any, Parsed], int | None]
    help: str = ""
    description: str = ""  # default: the options dataclass's docstring
    # the run-config sections it accepts; a callable of the parsed options (None in --help without them)
    sections: Sections | Callable[[Any], Sections] = field(default_factory=dict)
    plugin: Callable[[Any], type | None] | None = None
    plugin_catalogue: Callable[[], dict[str, type]] | None = None  # every plugin, by name: --help lists them
    help_extra: Callable[[Any], list[str]] | None = None  # more --help lines once the positionals are known
    resolved: Callable[[Parsed], dict[str, Any]] | None = None  # what --print-config prints (default: parsed)
    aliases: tuple[str, ...] = ()

    def sections_for(self, opts: Any) -> Sections:
        return self.sections(opts) if callable(self.sections) else self.sections


@dataclass
class Parsed:
    """The result of :func:`parse`: the command's own options, its plugin's, and the section values given
    (``{"trainer": {"max_steps": 5}}``; dataclass sections already typed, named specs as given)."""

    command: Command
    options: Any
    plugin: Any = None
    sections: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def overrides(self) -> dict[str, Any]:
        """The section values as ``{"trainer.max_steps": 5}`` (what ``RunConfig.override`` takes)."""
        return {f"{s}.{k}": v for s, values in self.sections.items() for k, v in values.items()}

    def as_dict(self) -> dict[str, Any]:
        return {
            **to_dict(self.options),
            **(to_dict(self.plugin) if self.plugin is not None else {}),
            **to_dict(self.sections),
        }


def command(
    sub: argparse._SubParsersAction,
    name: str,
    options: type,
    run: Callable[..., int | None],
    *,
    help: str = "",
    aliases: tuple[str, ...] = (),
    **kw: Any,
) -> Command:
    """Register subcommand ``name`` (and each alias, listed in ``neuratlas --help`` as "an alias of NAME")."""
    cmd = Command(name, options, run, help=help, aliases=aliases, **kw)
    for n, text in ((name, help), *((a, f"an alias of {name}") for a in aliases)):
        p = sub.add_parser(n, help=text, add_help=False)
        p.set_defaults(_command=cmd)
    return cmd


# --- reading the command line ----------------------------------------------------------------------------
def _key(s: str) -> str:
    return s.replace("-", "_")


def _is_bool(tp: Any) -> bool:
    return tp is bool or (typing.get_origin(tp) in (Union, types.UnionType) and bool in typing.get_args(tp))


def _is_list(tp: Any) -> bool:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        return any(_is_list(a) for a in typing.get_args(tp))
    return origin in (list, tuple) or tp in (list, tuple)


def _fields(cls: type | None) -> dict[str, Any]:
    """Field name -> type of dataclass ``cls`` (init fields only)."""
    if cls is None:
        return {}
    hints = field_types(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init}


def _flag_types(cmd: Command) -> dict[str, Any]:
    """Every flat and dotted key whose type is known before anything is parsed (own, every plugin, the
    static sections): tells a bare ``--bf16`` from ``--out DIR``."""
    out = dict(_fields(cmd.options))
    for cls in (cmd.plugin_catalogue() if cmd.plugin_catalogue else {}).values():
        for k, tp in _fields(cls).items():
            out.setdefault(k, tp)
    if not callable(cmd.sections):
        for s, cls in cmd.sections.items():
            out.update({f"{s}.{k}": tp for k, tp in _fields(cls).items()})
    return out


@dataclass
class _Raw:
    positionals: list[str] = field(default_factory=list)
    values: dict[str, list[Any]] = field(default_factory=dict)  # key -> values in the order given
    help: bool = False
    config: str | None = None
    print_config: str | None = None


def _split(argv: list[str], types_: dict[str, Any], where: str) -> _Raw:
    raw, i = _Raw(), 0
    while i < len(argv):
        a = argv[i]
        nxt = argv[i + 1] if i + 1 < len(argv) else None
        i += 1
        if a == "--":
            raw.positionals += argv[i:]
            break
        if a in ("-h", "--help"):
            raw.help = True
            continue
        if not a.startswith("-") or _is_number(a) or a == "-":
            raw.positionals.append(a)
            continue
        if not a.startswith("--"):
            raise NeuratlasError(f"{where}: unknown option {a!r}; options are spelled --key value")
        key, eq, value = a[2:].partition("=")
        section, dot, name = key.rpartition(".")
        key = f"{section}.{_key(name)}" if dot else _key(key)
        if key == "print_config":
            if not eq and nxt in ("yaml", "json"):
                value, i = nxt, i + 1
            raw.print_config = value or "auto"
            continue
        if not eq:
            takes_value = nxt is not None and (not nxt.startswith("--") or _is_number(nxt))
            if _is_bool(types_.get(key)) and (nxt or "").lower() not in _BOOL_WORDS:
                takes_value = False
            if takes_value:
                value, i = nxt, i + 1
            elif _is_bool(types_.get(key)) or key not in types_:
                value = "true"
            else:
                raise NeuratlasError(f"{where}: --{key} needs a value")
        if key == "config":
            raw.config = value
        else:
            raw.values.setdefault(key, []).append(value)
    return raw


def load_config_file(path: str) -> dict[str, Any]:
    """A YAML or JSON mapping of options (YAML needs PyYAML: the ``yaml`` extra)."""
    p = Path(path)
    if not p.is_file():
        raise NeuratlasError(f"--config {path}: no such file")
    text = p.read_text()
    if p.suffix.lower() in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise NeuratlasError(
                f"{path}: reading YAML needs PyYAML (pip install 'neuratlas[yaml]'), or give a .json file"
            ) from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise NeuratlasError(f"{path}: not valid YAML: {str(e).splitlines()[0]}") from None
    elif p.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise NeuratlasError(f"{path}: not valid JSON: {e}") from None
    else:
        raise NeuratlasError(f"{path}: --config takes a .yaml, .yml or .json file")
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise NeuratlasError(f"{path}: expected a mapping of options, got {type(data).__name__}")
    return data


def _build(cls: type, values: dict[str, Any], where: str) -> Any:
    hints = _fields(cls)
    kwargs = {k: coerce(v, hints[k], f"{where}: --{k}") for k, v in values.items()}
    try:
        return cls(**kwargs)
    except TypeError as e:  # a required positional left out
        missing = [
            f.name.upper()
            for f in dataclasses.fields(cls)
            if f.init
            and f.name not in kwargs
            and f.default is dataclasses.MISSING
            and f.default_factory is dataclasses.MISSING
        ]
        raise NeuratlasError(
            f"{where}: missing {', '.join(missing)} (see --help)" if missing else f"{where}: {e}"
        ) from None
    except ValueError as e:  # __post_init__ validation
        raise NeuratlasError(f"{where}: {e}") from None


def _value(key: str, given: list[Any], tp: Any) -> Any:
    """One key's value from its occurrences: a repeated list option collects, anything else: the last wins."""
    if len(given) > 1 and _is_list(tp):
        out: list[Any] = []
        for v in given:
            out += _parse_sequence(v) if isinstance(v, str) else list(v) if isinstance(v, (list, tuple)) else [v]
        return out
    return given[-1]


def _flatten(given: list[Any]) -> list[Any]:
    return [x for v in given for x in (v if isinstance(v, (list, tuple)) else [v])]


def parse(cmd: Command, argv: list[str]) -> Parsed | None:
    """Read ``argv`` (what follows the command's name) into typed options; ``None`` when ``--help`` or
    ``--print-config`` has already printed what was asked for."""
    where = f"neuratlas {cmd.name}"
    flag_types = _flag_types(cmd)
    raw = _split(list(argv), flag_types, where)
    values: dict[str, list[Any]] = {}
    where_file = where
    if raw.config:
        for k, v in load_config_file(raw.config).items():
            if isinstance(v, dict) and "." not in k and _key(k) not in flag_types:  # a section: {"trainer": {...}}
                for kk, vv in v.items():
                    values[f"{k}.{_key(kk)}"] = [vv]
            else:
                section, dot, name = k.rpartition(".")
                values[f"{section}.{_key(name)}" if dot else _key(k)] = [v]
        where_file = f"{where} (--config {raw.config})"
    for k, v in raw.values.items():
        values[k] = v
    own_types = _fields(cmd.options)
    own_pos = [f.name for f in dataclasses.fields(cmd.options) if f.metadata.get("positional")]
    pos = list(raw.positionals)
    for name in own_pos:
        if not pos:
            break
        if _is_list(own_types[name]):
            values[name], pos = [list(pos)], []
        else:
            values[name] = [pos.pop(0)]
    if pos and not raw.help:
        raise NeuratlasError(f"{where}: unexpected argument {pos[0]!r} (see `{where} --help`)")
    repeat = {f.name for f in dataclasses.fields(cmd.options) if f.metadata.get("repeat")}
    own_vals = {
        k: _flatten(values.pop(k)) if k in repeat else _value(k, values.pop(k), tp)
        for k, tp in own_types.items()
        if k in values
    }
    if raw.help:
        partial = _partial(cmd.options, own_vals, where)
        print(format_help(cmd, partial))
        return None
    try:
        opts = _build(cmd.options, own_vals, where)
    except NeuratlasError:  # a typo is the likelier problem: say that first
        for k in values:
            if "." not in k and k not in flag_types:
                known = [f"--{n}" for n in flag_types if "." not in n and n not in own_pos]
                static = [f"--{s}.*" for s in cmd.sections_for(None)]
                ctx = where if k in raw.values else where_file
                raise _unknown(f"--{k}", [*known, *_COMMON, *static], ctx) from None
        raise
    plugin_cls = cmd.plugin(opts) if cmd.plugin else None
    plugin_types = _fields(plugin_cls)
    flat = {k: v for k, v in values.items() if "." not in k}
    sections = dict(cmd.sections_for(opts))
    valid = [f"--{k}" for k in [*own_types, *plugin_types] if k not in own_pos]
    valid += [*_COMMON, *(f"--{s}.*" for s in sections)]
    for k in flat:
        if k not in plugin_types:
            raise _unknown(f"--{k}", valid, where if k in raw.values else where_file)
    plugin = None
    if plugin_cls is not None:
        plugin = _build(plugin_cls, {k: _value(k, v, plugin_types[k]) for k, v in flat.items()}, where)
    given: dict[str, dict[str, Any]] = {}
    for k, v in values.items():
        if "." not in k:
            continue
        section, _, name = k.partition(".")
        ctx = where if k in raw.values else where_file
        if section not in sections:
            raise _unknown(f"--{k}", valid, ctx)
        cls = sections[section]
        if cls is not None:
            hints = _fields(cls)
            if name not in hints:
                raise _unknown(f"--{k}", [f"--{section}.{n}" for n in hints], ctx)
            given.setdefault(section, {})[name] = coerce(_value(k, v, hints[name]), hints[name], f"{ctx}: --{k}")
        else:
            given.setdefault(section, {})[name] = v[-1]
    parsed = Parsed(cmd, opts, plugin, given)
    if raw.print_config:
        print(dump(cmd.resolved(parsed) if cmd.resolved else parsed.as_dict(), raw.print_config), end="")
        return None
    return parsed


def _unknown(key: str, valid: list[str], where: str) -> NeuratlasError:
    return unknown_key_error(key, valid, where)


def _partial(cls: type, values: dict[str, Any], where: str) -> Any:
    """The own options for --help: whatever was given that reads, without requiring the rest."""
    try:
        return _build(cls, values, where)
    except NeuratlasError:
        return None


def dump(data: dict[str, Any], fmt: str = "auto") -> str:
    """``data`` as YAML (when PyYAML is installed, or asked for) or JSON."""
    data = to_dict(data)
    if fmt in ("auto", "yaml"):
        try:
            import yaml
        except ImportError:
            if fmt == "yaml":
                raise NeuratlasError(
                    "--print-config yaml needs PyYAML (pip install 'neuratlas[yaml]'); "
                    "--print-config json needs nothing"
                ) from None
        else:
            return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
    if fmt not in ("auto", "json"):
        raise NeuratlasError(f"--print-config takes yaml or json, got {fmt!r}")
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


# --- --help from the dataclasses ---------------------------------------------------------------------------
def type_name(tp: Any) -> str:
    """How a field's type reads in --help: ``{a,b}`` for a Literal, ``INT|none``, ``FLOAT,FLOAT``, ``STR,...``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return "{" + ",".join(map(str, args)) + "}"
    if origin in (Union, types.UnionType):
        names = [type_name(a) for a in args if a is not type(None)]
        return "|".join(names) + ("|none" if type(None) in args else "")
    if origin in (list, tuple) or tp in (list, tuple):
        if origin is tuple and args and args[-1] is not Ellipsis:
            return ",".join(type_name(a) for a in args)
        return f"{type_name(args[0]) if args else 'VALUE'},..."
    if origin is dict or tp is dict:
        return "JSON"
    return {bool: "BOOL", int: "INT", float: "FLOAT", str: "STR"}.get(tp, "VALUE")


@cache
def field_docs(cls: type) -> dict[str, str]:
    """Each field's help: its ``help`` metadata, else the comment at the end of its line, else the comment
    lines just above it (from the class's source, parents first)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass) or klass is object:
            continue
        try:
            src = textwrap.dedent(inspect.getsource(klass))
        except (OSError, TypeError):
            continue
        comments: dict[int, str] = {}
        try:
            for tok in tokenize.generate_tokens(io.StringIO(src).readline):
                if tok.type == tokenize.COMMENT:
                    comments[tok.start[0]] = tok.string.lstrip("#").strip()
        except (tokenize.TokenError, IndentationError):
            continue
        lines = src.splitlines()
        body = ast.parse(src).body[0]
        for stmt in getattr(body, "body", []):
            if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
                text = comments.get(stmt.end_lineno or stmt.lineno, "")
                if not text:
                    above, ln = [], stmt.lineno - 1
                    while ln >= 1 and lines[ln - 1].strip().startswith("#"):
                        above.insert(0, comments.get(ln, ""))
                        ln -= 1
                    text = " ".join(above)
                docs[stmt.target.id] = text
    for f in dataclasses.fields(cls):
        if f.metadata.get("help"):
            docs[f.name] = f.metadata["help"]
    return docs


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def _show(v: Any) -> str:
    if v is None:
        return "none"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, (list, tuple)):
        return ",".join(map(_show, v)) if v else "[]"
    if isinstance(v, dict):
        return json.dumps(v)
    return json.dumps(v) if isinstance(v, str) and (not v or any(c.isspace() for c in v)) else str(v)


def option_lines(cls: type, prefix: str = "", skip_positional: bool = True) -> list[str]:
    """``--key TYPE  comment (default: ...)`` for each field of ``cls``."""
    hints, docs, out = field_types(cls), field_docs(cls), []
    for f in dataclasses.fields(cls):
        if not f.init or (skip_positional and f.metadata.get("positional")):
            continue
        tp = hints[f.name]
        shown = type_name(typing.get_args(tp)[0] if f.metadata.get("repeat") else tp)
        shown = "[BOOL]" if tp is bool else shown
        flag = f"--{prefix}{f.name} {shown}"
        default = _default(f)
        text = docs.get(f.name, "")
        if default is not dataclasses.MISSING and "default" not in text:  # a comment may say it better
            text = f"{text} (default: {_show(default)})" if text else f"default: {_show(default)}"
        out.append(_two_columns(flag, text))
    return out


def _two_columns(left: str, right: str, width: int = 30, line: int = 110) -> str:
    """``  --key TYPE   help``, the help wrapped in its column."""
    indent = " " * (width + 3)
    text = "\n".join(textwrap.wrap(right, line - len(indent), break_on_hyphens=False)).replace("\n", "\n" + indent)
    pad = f"  {left:<{width}} " if len(left) < width else f"  {left}\n{indent}"
    return (pad + text).rstrip()


def usage(cmd: Command) -> str:
    parts = []
    for f in dataclasses.fields(cmd.options):
        if f.metadata.get("positional"):
            name = f.name.upper() + (" ..." if _is_list(field_types(cmd.options)[f.name]) else "")
            parts.append(name if _default(f) is dataclasses.MISSING else f"[{name}]")
    return f"usage: neuratlas {cmd.name} {' '.join(parts)} [--OPTION VALUE ...]".replace("  ", " ")


def format_help(cmd: Command, opts: Any = None) -> str:
    description = cmd.description or inspect.cleandoc(cmd.options.__doc__ or "")
    if description.startswith(f"{cmd.options.__name__}("):  # the dataclass's generated docstring
        description = cmd.help
    lines = [usage(cmd), ""]
    if cmd.aliases:
        lines += [f"Aliases: {', '.join(cmd.aliases)}.", ""]
    lines += [textwrap.fill(" ".join(p.split()), 110) for p in description.split("\n\n")] + [""]
    hints, docs = field_types(cmd.options), field_docs(cmd.options)
    pos = [f for f in dataclasses.fields(cmd.options) if f.metadata.get("positional")]
    if pos:
        lines.append("arguments:")
        for f in pos:
            choices = typing.get_args(hints[f.name]) if typing.get_origin(hints[f.name]) is Literal else ()
            text = docs.get(f.name, "") + (f" {{{','.join(choices)}}}" if choices else "")
            lines.append(_two_columns(f.name.upper() + (" ..." if _is_list(hints[f.name]) else ""), text.strip()))
    lines += [
        "options:",
        *option_lines(cmd.options),
        _two_columns(
            "--config FILE",
            "read options from a YAML or JSON file (own options at the top, "
            "sections as mappings); the command line wins",
        ),
        _two_columns("--print-config [yaml|json]", "print the resolved options and exit"),
        _two_columns("-h, --help", "show this help and exit"),
    ]
    if cmd.plugin_catalogue:
        catalogue = cmd.plugin_catalogue()
        chosen = cmd.plugin(opts) if (opts is not None and cmd.plugin) else None
        names_of: dict[type, list[str]] = {}
        for name, cls in catalogue.items():
            if chosen is None or cls is chosen:
                names_of.setdefault(cls, []).append(name)
        for cls, names in names_of.items():
            rows = option_lines(cls)
            if rows:
                lines += ["", f"options of {', '.join(names)}:", *rows]
    sections = cmd.sections_for(opts)  # a callable gets None when the positionals are not given yet
    if sections:
        lines += ["", "sections (--SECTION.KEY VALUE):"]
        for s, cls in sections.items():
            if cls is None:
                lines.append(_two_columns(f"--{s}.KEY VALUE", f"the {s} spec's options (checked when it is built)"))
            else:
                lines += option_lines(cls, prefix=f"{s}.")
    if cmd.help_extra and opts is not None:
        lines += ["", *cmd.help_extra(opts)]
    return "\n".join(lines).rstrip()


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """Every subcommand name (aliases included) -> its parser."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def run(cmd: Command, argv: list[str]) -> int:
    parsed = parse(cmd, argv)
    if parsed is None:
        return 0
    sys.stdout.flush()
    return cmd.run(parsed.options, parsed) or 0
