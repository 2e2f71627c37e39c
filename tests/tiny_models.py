"""Tiny random diffusers pipelines built fully offline (tokenizers included), saved in the real on-disk format."""

from __future__ import annotations

import string
from pathlib import Path

import torch


def _byte_chars() -> list[str]:
    """GPT-2 / CLIP byte-to-unicode table: the printable characters byte-level BPE uses for all 256 bytes."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def tiny_clip_tokenizer():
    """A real `CLIPTokenizer` (byte-level BPE) over single bytes, with a few merges."""
    from transformers import CLIPTokenizer

    chars = _byte_chars()
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for ch in chars:
        vocab.setdefault(ch, len(vocab))
    for ch in chars:
        vocab.setdefault(ch + "</w>", len(vocab))
    merges = [("s", "p</w>"), ("r", "e"), ("a", "t</w>")]
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)


def tiny_t5_tokenizer():
    """A real `T5Tokenizer` (Unigram) over lowercase letters and digits."""
    from transformers import T5Tokenizer

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    pieces += [(ch, -5.0) for ch in string.ascii_lowercase + string.digits + ".,"]
    pieces += [("▁" + ch, -4.0) for ch in string.ascii_lowercase]
    return T5Tokenizer(vocab=pieces, extra_ids=0)


def tiny_kontext(seed: int = 0):
    """A FluxKontextPipeline with tiny random weights (a VAE downsampling by 8, like FLUX's)."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxKontextPipeline, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    torch.manual_seed(seed)
    clip_tok, t5_tok = tiny_clip_tokenizer(), tiny_t5_tokenizer()
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, guidance_embeds=True,
        axes_dims_rope=(4, 6, 6),
    )
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1, norm_num_groups=4,
        block_out_channels=(8, 8, 8, 8), down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, use_quant_conv=False, use_post_quant_conv=False,
        shift_factor=0.0609, scaling_factor=1.5035, mid_block_add_attention=False,
    )
    clip = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(clip_tok), hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=77, projection_dim=32, bos_token_id=0, eos_token_id=1, pad_token_id=1,
    ))
    t5 = T5EncoderModel(T5Config(vocab_size=len(t5_tok), d_model=32, d_ff=37, d_kv=8, num_layers=2, num_heads=4,
                                 relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1))
    scheduler = FlowMatchEulerDiscreteScheduler(
        shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15, base_image_seq_len=256,
        max_image_seq_len=4096,
    )
    return FluxKontextPipeline(scheduler=scheduler, vae=vae, text_encoder=clip, tokenizer=clip_tok,
                               text_encoder_2=t5, tokenizer_2=t5_tok, transformer=transformer)


def save_tiny_kontext(folder: Path, seed: int = 0) -> Path:
    tiny_kontext(seed).save_pretrained(folder, safe_serialization=True)
    return folder
