"""Text encoders: the protocol the pipeline needs (prompts -> sequence embeddings + pooled vector)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, Self

import torch


@dataclass
class TextEmbeddings:
    """Per-prompt conditioning: the token sequence the transformer attends to and a pooled vector."""

    sequence: torch.Tensor
    """(B, L, joint_attention_dim)"""
    pooled: torch.Tensor
    """(B, pooled_projection_dim)"""


class TextEncoder(Protocol):
    """What the pipeline asks of a text encoder (the demo's word-level CLIP, FLUX's CLIP + T5, ...)."""

    kind: str

    def encode(self, prompts: list[str]) -> TextEmbeddings: ...

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> TextEncoder: ...

    def save_pretrained(self, root: Path) -> None: ...


SPECIAL_TOKENS = ("<pad>", "<unk>", "<bos>", "<eos>")
# eos must not be id 2: transformers' CLIP treats eos_token_id == 2 as a legacy config and pools by argmax.
PAD_ID, UNK_ID, BOS_ID, EOS_ID = range(4)
PUNCTUATION = (",", ":", ";", ".", "!", "?", "-", "'", '"', "(", ")")


def build_word_tokenizer(vocabulary: Iterable[str], max_length: int):  # -> PreTrainedTokenizerFast
    """A lowercase word-level tokenizer built offline from a word list (the demo world's vocabulary)."""
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    vocab: dict[str, int] = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    # The pre-tokenizer splits punctuation into tokens of its own; give them ids rather than <unk>.
    for word in (*PUNCTUATION, *vocabulary):
        word = word.lower()
        if word not in vocab:
            vocab[word] = len(vocab)
    tok = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A <eos>", special_tokens=[("<bos>", BOS_ID), ("<eos>", EOS_ID)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        unk_token="<unk>",
        bos_token="<bos>",
        eos_token="<eos>",
        model_max_length=max_length,
    )


class WrappedTextModel:
    """What every text encoder that wraps one transformers model and its tokenizer shares: moving the model,
    and saving both as a pipeline folder's `text_encoder/` and `tokenizer/`."""

    model: Any
    tokenizer: Any

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> Self:
        self.model.to(device=device, dtype=dtype)
        return self

    def save_pretrained(self, root: Path) -> None:
        self.model.save_pretrained(root / "text_encoder", safe_serialization=True)
        self.tokenizer.save_pretrained(root / "tokenizer")


class ClipTextEncoder(WrappedTextModel):
    """A transformers ``CLIPTextModel`` and its tokenizer: last hidden state + pooled (EOS) output."""

    kind = "clip"

    def __init__(self, model, tokenizer, max_length: int | None = None) -> None:  # CLIPTextModel, tokenizer
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.max_length = max_length or min(tokenizer.model_max_length, model.config.max_position_embeddings)

    @property
    def device(self) -> torch.device:
        return self.model.device

    def tokenize(self, prompts: list[str]) -> torch.Tensor:
        """(B, max_length) input ids, padded and truncated (the EOS token is kept)."""
        batch = self.tokenizer(
            prompts, padding="max_length", truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        return batch["input_ids"]

    @staticmethod
    def embed(model: torch.nn.Module, input_ids: torch.Tensor) -> TextEmbeddings:
        """Run a CLIP text model (possibly wrapped for training) on input ids, with autograd as the caller sets."""
        out = model(input_ids=input_ids)
        return TextEmbeddings(sequence=out.last_hidden_state, pooled=out.pooler_output)

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> TextEmbeddings:
        return self.embed(self.model, self.tokenize(prompts).to(self.model.device))

    @classmethod
    def from_pretrained(cls, root: Path, dtype: torch.dtype = torch.float32) -> ClipTextEncoder:
        from transformers import AutoTokenizer, CLIPTextModel

        # Weights may be stored in half precision to ship small; compute in `dtype`.
        model = load_small_clip(root / "text_encoder", dtype)
        if model is None:
            model = CLIPTextModel.from_pretrained(root / "text_encoder", use_safetensors=True, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(root / "tokenizer")
        return cls(model, tokenizer)


SMALL_CLIP_BYTES = 64 * 2**20
"""Up to this size a text encoder is built from its config and its state dict read directly."""


def load_small_clip(folder: Path, dtype: torch.dtype = torch.float32):  # -> CLIPTextModel | None
    """A single-file ``CLIPTextModel`` checkpoint loaded without transformers' generic loader, or None.

    ``from_pretrained`` (transformers 5) compiles about a thousand regular expressions for the
    checkpoint-conversion rules of every architecture before it reads a tensor: 0.3 s of the CLI's
    start-up on a 2-core CPU, for a 1 MB encoder whose tensors load in milliseconds. A small checkpoint
    whose keys match the model's exactly is loaded here instead (the outputs are identical; tested).
    Anything else (sharded, large, renamed keys from another transformers version) returns None, and
    the caller uses ``from_pretrained``.
    """
    from safetensors.torch import load_file
    from transformers import CLIPTextConfig, CLIPTextModel

    weights = folder / "model.safetensors"
    if not weights.is_file() or weights.stat().st_size > SMALL_CLIP_BYTES:
        return None
    config = CLIPTextConfig.from_pretrained(folder)
    state = load_file(weights)
    with torch.random.fork_rng(devices=[]):  # the throwaway initialisation leaves the caller's seed alone
        model = CLIPTextModel(config)
    if set(state) != set(model.state_dict()):
        return None
    try:
        model.load_state_dict(state, strict=True)  # copies (and casts) into the float32 parameters
    except RuntimeError as exc:  # shapes that do not fit the config
        raise ValueError(f"text_encoder: {str(exc).splitlines()[-1].strip()}") from None
    return model.to(dtype=dtype).eval()
