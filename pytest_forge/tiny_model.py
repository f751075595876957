"""The deterministic tiny Llama used on CPU: built locally, never downloaded.

2 layers, hidden 128, 2 heads, 1 KV head, a 512-token byte-level BPE trained with
`tokenizers` on a fixed corpus, random weights from a fixed seed, stored in bf16.
A recipe names it as `model: forge:tiny-llama`; the server resolves that name to a
cache directory and builds the model there on first use (torch and transformers come
with vLLM, so building happens in a subprocess on hosts that have vLLM).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from pytest_forge.errors import ForgeError

TINY_MODEL_NAME = "forge:tiny-llama"
# Bump when the architecture, corpus or seed change: the cache key follows it.
TINY_MODEL_VERSION = "1"
SEED = 1234
VOCAB_SIZE = 512

# A fixed, varied corpus so the BPE merges are deterministic and cover ordinary text.
_CORPUS_LINES = [
    "The quick brown fox jumps over the lazy dog.",
    "Explain attention in transformers in simple words.",
    "Write a Python function that merges two sorted lists.",
    "What is the capital of France? The capital of France is Paris.",
    "Summarise the following document for a busy engineer.",
    "You are a helpful assistant. Answer briefly and precisely.",
    "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n",
    "The key-value cache stores past keys and values for each layer.",
    "Throughput, latency, time to first token and time per output token.",
    "0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 100 1000",
    "Large language models are served with continuous batching and paged attention.",
    "SELECT name, count(*) FROM users GROUP BY name ORDER BY 2 DESC;",
    "Once upon a time, in a land far away, there lived a curious engineer.",
    "Translate to French: good morning, how are you today?",
    "The answer is 4. The answer is yes. The answer is no.",
]


def default_cache_dir() -> Path:
    """Where built models are kept: $FORGE_CACHE_DIR/models, else in the user cache.

    The user cache is $XDG_CACHE_HOME (or ~/.cache), under pytest-forge/models.
    """
    base = os.environ.get("FORGE_CACHE_DIR") or os.environ.get("XDG_CACHE_HOME")
    root = Path(base) if base else Path.home() / ".cache"
    if not os.environ.get("FORGE_CACHE_DIR"):
        root = root / "pytest-forge"
    return root / "models"


def is_tiny_model(name: str) -> bool:
    """True when a recipe's model names the built-in tiny Llama."""
    return name == TINY_MODEL_NAME


def tiny_model_dir(cache_dir: Path | None = None) -> Path:
    """The directory this version of the tiny Llama is built into."""
    return (cache_dir or default_cache_dir()) / f"tiny-llama-v{TINY_MODEL_VERSION}"


def _is_built(path: Path) -> bool:
    return (
        (path / "config.json").is_file()
        and (path / "tokenizer.json").is_file()
        and any(path.glob("*.safetensors"))
    )


def local_model(name: str) -> tuple[str, bool]:
    """What vLLM loads for `name`, without building anything, and whether it is there yet.

    The tiny model's cache directory (there once built); any other name is itself.
    """
    if not is_tiny_model(name):
        return name, True
    path = tiny_model_dir()
    return str(path), _is_built(path)


def resolve_model(name: str, python: str | None = None) -> str:
    """Return what to pass vLLM as the model: the built tiny model's directory, or `name`."""
    if not is_tiny_model(name):
        return name
    path = tiny_model_dir()
    if not _is_built(path):
        # Build in a subprocess: the pytest process never imports torch.
        cmd = [python or sys.executable, "-m", "pytest_forge.tiny_model", str(path)]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0 or not _is_built(path):
            raise ForgeError(
                f"could not build the tiny model {TINY_MODEL_NAME} into {path}:\n"
                f"{(proc.stderr or proc.stdout)[-2000:]}"
            )
    return str(path)


def build(out_dir: Path) -> Path:
    """Build the tiny Llama into `out_dir` (atomic: a half-built model is never used)."""
    import tempfile

    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM

    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tiny-llama-", dir=out_dir.parent))

    tokenizer = Tokenizer(models.BPE(unk_token=None))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=["<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_CORPUS_LINES * 20, trainer=trainer)
    tokenizer.save(str(tmp / "tokenizer.json"))
    (tmp / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "PreTrainedTokenizerFast",
                "bos_token": "<s>",
                "eos_token": "</s>",
                "model_max_length": 2048,
                "clean_up_tokenization_spaces": False,
            },
            indent=2,
        )
    )
    (tmp / "special_tokens_map.json").write_text(
        json.dumps({"bos_token": "<s>", "eos_token": "</s>"}, indent=2)
    )

    config = LlamaConfig(
        vocab_size=tokenizer.get_vocab_size(),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=2048,
        bos_token_id=tokenizer.token_to_id("<s>"),
        eos_token_id=tokenizer.token_to_id("</s>"),
        tie_word_embeddings=False,
        dtype="bfloat16",
    )
    torch.manual_seed(SEED)
    # transformers wraps PreTrainedModel.to with functools.wraps, which typeshed types as a
    # plain callable rather than a method, so mypy takes the dtype for `self`.
    model = LlamaForCausalLM(config).to(torch.bfloat16)  # type: ignore[arg-type]
    model.save_pretrained(tmp, safe_serialization=True)
    (tmp / "forge-tiny-model.json").write_text(
        json.dumps({"name": TINY_MODEL_NAME, "version": TINY_MODEL_VERSION, "seed": SEED})
    )
    if out_dir.exists():
        import shutil

        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
    return out_dir


def main(argv: list[str] | None = None) -> int:
    """Command line: build the tiny Llama into the directory given; prints its path."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m pytest_forge.tiny_model DIR", file=sys.stderr)
        return 2
    print(build(Path(args[0])))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
