"""Write a tiny random-weight llama GGUF that a real ``llama-server`` loads in milliseconds.

The tokenizer (every ``tokenizer.*`` key) is copied from llama.cpp's vocab-only
``ggml-vocab-llama-spm.gguf``, which ``scripts/build-llama-server.sh`` keeps next to the binary it
builds. Weights are random (fixed seed), so the output is gibberish and EOS is rare: callers must
always send ``max_tokens``. Needs the ``gguf`` and ``numpy`` packages.

Run as a script: ``python tests/real/tiny_model.py OUT.gguf [--vocab PATH] [--seed N]``.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np

VOCAB_FILE = "ggml-vocab-llama-spm.gguf"
LLAMA_VERSION = "11434.0.0"
DEFAULT_CACHE = Path.home() / ".cache" / "nexus" / f"llama-server-{LLAMA_VERSION}"

# Enough for /v1/chat/completions; the roles are markers only the random weights ever see.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}</s>\n"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


@dataclass(frozen=True)
class Shape:
    """The model's dimensions; the defaults make a 4.17 M-parameter, ~9 MB file."""

    n_embd: int = 64
    n_layer: int = 2
    n_head: int = 4
    n_head_kv: int = 2
    n_ff: int = 128
    n_ctx_train: int = 2048

    @property
    def head_dim(self) -> int:
        """Size of one attention head (also the rotary dimension)."""
        return self.n_embd // self.n_head


def find_vocab(binary: str | os.PathLike[str] | None = None) -> Path:
    """The vocab file: ``NEXUS_LLAMA_VOCAB``, else next to ``binary``, else in the build cache."""
    candidates = []
    if explicit := os.environ.get("NEXUS_LLAMA_VOCAB"):
        candidates.append(Path(explicit))
    if binary is not None:
        candidates.append(Path(binary).parent / VOCAB_FILE)
    cache = os.environ.get("NEXUS_LLAMA_CACHE")
    candidates.append((Path(cache) if cache else DEFAULT_CACHE) / VOCAB_FILE)
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    tried = ", ".join(str(c) for c in candidates)
    raise FileNotFoundError(
        f"{VOCAB_FILE} not found (tried {tried}); run scripts/build-llama-server.sh"
    )


def write_tiny_model(
    out: str | os.PathLike[str],
    vocab: str | os.PathLike[str],
    *,
    seed: int = 1234,
    shape: Shape = Shape(),
    name: str = "tiny",
) -> Path:
    """Write the model to ``out`` (same seed and shape, same weights) and return its path."""
    out = Path(out)
    vocab_reader = gguf.GGUFReader(vocab)
    vocab_size = len(vocab_reader.fields["tokenizer.ggml.tokens"].data)
    writer = gguf.GGUFWriter(out, "llama")
    writer.add_name(name)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    writer.add_context_length(shape.n_ctx_train)
    writer.add_embedding_length(shape.n_embd)
    writer.add_block_count(shape.n_layer)
    writer.add_feed_forward_length(shape.n_ff)
    writer.add_head_count(shape.n_head)
    writer.add_head_count_kv(shape.n_head_kv)
    writer.add_rope_dimension_count(shape.head_dim)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(vocab_size)
    for field in vocab_reader.fields.values():
        if field.name.startswith("tokenizer."):
            _copy_field(writer, field)
    writer.add_chat_template(CHAT_TEMPLATE)

    rng = np.random.default_rng(seed)

    def weights(rows: int, cols: int, dtype: type[np.floating[Any]] = np.float32) -> Any:
        # numpy (rows, cols) is ggml (ne[1], ne[0]): a matrix maps cols inputs to rows outputs.
        return rng.normal(0.0, 0.02, size=(rows, cols)).astype(dtype)

    def ones() -> Any:
        return np.ones(shape.n_embd, dtype=np.float32)

    n_q = shape.n_head * shape.head_dim
    n_kv = shape.n_head_kv * shape.head_dim
    writer.add_tensor("token_embd.weight", weights(vocab_size, shape.n_embd, np.float16))
    for block in range(shape.n_layer):
        prefix = f"blk.{block}."
        writer.add_tensor(prefix + "attn_norm.weight", ones())
        writer.add_tensor(prefix + "attn_q.weight", weights(n_q, shape.n_embd))
        writer.add_tensor(prefix + "attn_k.weight", weights(n_kv, shape.n_embd))
        writer.add_tensor(prefix + "attn_v.weight", weights(n_kv, shape.n_embd))
        writer.add_tensor(prefix + "attn_output.weight", weights(shape.n_embd, n_q))
        writer.add_tensor(prefix + "ffn_norm.weight", ones())
        writer.add_tensor(prefix + "ffn_gate.weight", weights(shape.n_ff, shape.n_embd))
        writer.add_tensor(prefix + "ffn_up.weight", weights(shape.n_ff, shape.n_embd))
        writer.add_tensor(prefix + "ffn_down.weight", weights(shape.n_embd, shape.n_ff))
    writer.add_tensor("output_norm.weight", ones())
    writer.add_tensor("output.weight", weights(vocab_size, shape.n_embd, np.float16))

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


def token_id(model: str | os.PathLike[str], piece: str) -> int:
    """The id of the token spelled exactly ``piece`` in ``model``'s vocabulary."""
    tokens = gguf.GGUFReader(model).fields["tokenizer.ggml.tokens"]
    wanted = piece.encode()
    for index, part in enumerate(tokens.data):
        if bytes(tokens.parts[part]) == wanted:
            return index
    raise KeyError(f"no token {piece!r} in {model}")


def _copy_field(writer: gguf.GGUFWriter, field: gguf.ReaderField) -> None:
    """Copy one metadata key as it is stored: strings as raw bytes, arrays with their item type."""
    kind = field.types[0]
    if kind is gguf.GGUFValueType.ARRAY:
        item = field.types[-1]
        if item is gguf.GGUFValueType.STRING:
            items: list[Any] = [bytes(field.parts[i]) for i in field.data]
        else:
            items = [field.parts[i].tolist()[0] for i in field.data]
        writer.add_key_value(field.name, items, kind, sub_type=item)
    elif kind is gguf.GGUFValueType.STRING:
        writer.add_key_value(field.name, bytes(field.parts[-1]), kind)
    else:
        writer.add_key_value(field.name, field.parts[-1].tolist()[0], kind)


def main() -> None:
    """Command line: write the tiny model."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="the GGUF file to write")
    parser.add_argument("--vocab", type=Path, help=f"{VOCAB_FILE} (default: the build cache)")
    parser.add_argument("--seed", type=int, default=1234)
    args = parser.parse_args()
    path = write_tiny_model(args.out, args.vocab or find_vocab(), seed=args.seed)
    print(f"{path} ({path.stat().st_size:,} bytes)")


if __name__ == "__main__":
    main()
