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


def save_tiny_flux_text_to_image(folder: Path, seed: int = 0) -> Path:
    """A FluxPipeline (FLUX.1 [dev]'s text-to-image layout) with tiny random weights, saved like the real one."""
    from diffusers import FluxPipeline

    parts = tiny_kontext(seed).components
    FluxPipeline(**{k: parts[k] for k in ("scheduler", "vae", "text_encoder", "tokenizer", "text_encoder_2",
                                          "tokenizer_2", "transformer")}).save_pretrained(folder,
                                                                                         safe_serialization=True)
    return folder


QWEN_SPECIAL_TOKENS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>",
    "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>",
    "<|image_pad|>", "<|video_pad|>",
)
"""Qwen2.5-VL's special tokens, in its order (ids 151643..151656 there; right after the byte vocab here)."""


def tiny_qwen_tokenizer():
    """A real `Qwen2Tokenizer` (byte-level BPE) over single bytes, a few merges and Qwen2.5-VL's special tokens."""
    from transformers import Qwen2Tokenizer

    vocab: dict[str, int] = {}
    for ch in _byte_chars():
        vocab.setdefault(ch, len(vocab))
    merges = [("Ġ", "t"), ("h", "e"), ("i", "n"), ("Ġ", "a")]
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    for token in QWEN_SPECIAL_TOKENS:
        vocab.setdefault(token, len(vocab))
    # As in Qwen's tokenizer: <|endoftext|> pads and ends; the rest are special (never split, never merged).
    return Qwen2Tokenizer(vocab=vocab, merges=merges, extra_special_tokens=list(QWEN_SPECIAL_TOKENS[1:]),
                          model_max_length=32768)


def tiny_qwen_edit(plus: bool = False, seed: int = 0):
    """A QwenImageEditPipeline (or QwenImageEditPlusPipeline) with tiny random weights, built fully in code.

    Same structure as Qwen-Image-Edit: a VAE downsampling by 8 (so the pipeline's 16 px multiple), 2x2 latent
    patches, a Qwen2.5-VL text encoder whose vision tower sees the image, and the Qwen-Image scheduler config.
    """
    from diffusers import (
        AutoencoderKLQwenImage,
        FlowMatchEulerDiscreteScheduler,
        QwenImageEditPipeline,
        QwenImageEditPlusPipeline,
        QwenImageTransformer2DModel,
    )
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from layercomposer.refine import image_only_qwen_processor

    torch.manual_seed(seed)
    tokenizer = tiny_qwen_tokenizer()
    tid = tokenizer.convert_tokens_to_ids
    z_dim = 4
    transformer = QwenImageTransformer2DModel(
        patch_size=2, in_channels=4 * z_dim, out_channels=z_dim, num_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=32, guidance_embeds=False, axes_dims_rope=(4, 6, 6),
    )
    # Three downsamples (like the real VAE's dim_mult [1, 2, 4, 4]) at few channels: the pipeline encodes every
    # input image at about 1 MP, so this VAE's cost dominates a run.
    vae = AutoencoderKLQwenImage(
        base_dim=4, z_dim=z_dim, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True],
        latents_mean=[0.1, -0.2, 0.0, 0.3], latents_std=[1.5, 1.0, 2.0, 0.8],
    )
    text_encoder = Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(
        text_config={
            "vocab_size": len(tokenizer), "hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2,
            "num_attention_heads": 2, "num_key_value_heads": 1, "max_position_embeddings": 4096,
            "rope_scaling": {"mrope_section": [2, 3, 3], "rope_type": "default", "type": "default"},
            "rope_theta": 1_000_000.0, "bos_token_id": tid("<|endoftext|>"), "eos_token_id": tid("<|im_end|>"),
            "pad_token_id": tid("<|endoftext|>"),
        },
        vision_config={
            "depth": 2, "hidden_size": 16, "intermediate_size": 32, "num_heads": 2, "out_hidden_size": 32,
            "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2, "window_size": 112,
            "fullatt_block_indexes": [1],
        },
        image_token_id=tid("<|image_pad|>"), video_token_id=tid("<|video_pad|>"),
        vision_start_token_id=tid("<|vision_start|>"), vision_end_token_id=tid("<|vision_end|>"),
    ))
    # Qwen2.5-VL's image processor (patches 14 px, merged 2x2), capped at 16 merged tokens an image (the real
    # one allows 16384) so the tiny vision tower stays cheap.
    image_processor = Qwen2VLImageProcessorPil(min_pixels=4 * 28 * 28, max_pixels=16 * 28 * 28, patch_size=14,
                                               temporal_patch_size=2, merge_size=2)
    processor = image_only_qwen_processor()(image_processor=image_processor, tokenizer=tokenizer)
    scheduler = FlowMatchEulerDiscreteScheduler(  # Qwen-Image's scheduler_config.json
        num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=0.9,
        base_image_seq_len=256, max_image_seq_len=8192, shift_terminal=0.02, time_shift_type="exponential",
    )
    cls = QwenImageEditPlusPipeline if plus else QwenImageEditPipeline
    return cls(scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, processor=processor,
               transformer=transformer)


def save_tiny_qwen_edit(folder: Path, plus: bool = False, seed: int = 0) -> Path:
    """Save `tiny_qwen_edit` as Qwen/Qwen-Image-Edit(-2509) is laid out (processor class names included)."""
    import json

    tiny_qwen_edit(plus, seed).save_pretrained(folder, safe_serialization=True)
    # The pipeline was built with the image-only subclass; the real folders name transformers' class, and carry
    # the video processor config that its from_pretrained reads (where torchvision is installed).
    index = json.loads((folder / "model_index.json").read_text())
    index["processor"] = ["transformers", "Qwen2VLProcessor"]
    (folder / "model_index.json").write_text(json.dumps(index, indent=2))
    for path in [*(folder / "processor").glob("*.json"), *(folder / "tokenizer").glob("*.json")]:
        if path.name == "tokenizer.json":
            continue
        doc = json.loads(path.read_text())
        if "processor_class" in doc:
            doc["processor_class"] = "Qwen2VLProcessor"
        if path.name == "processor_config.json":
            image = doc["image_processor"]
            doc["video_processor"] = {
                "video_processor_type": "Qwen2VLVideoProcessor", "size": image["size"],
                "patch_size": image["patch_size"], "temporal_patch_size": image["temporal_patch_size"],
                "merge_size": image["merge_size"], "image_mean": image["image_mean"], "image_std": image["image_std"],
            }
        path.write_text(json.dumps(doc, indent=2))
    return folder


def write_gguf(state_dict: dict, path: Path, arch: str = "flux") -> tuple[int, int]:
    """Write a diffusers transformer state dict as a GGUF file, as community GGUF converters do: matrices whose
    rows split into 32-value blocks as Q8_0, everything else float32. Keys as given: diffusers' own (read
    unconverted; FLUX.1's BFL-layout converter assumes the real 3072 width, so tiny FLUX.1 files use these) or BFL's
    original layout (`flux2_to_bfl`, which diffusers converts on load).

    Returns (quantized tensors, all tensors)."""
    import gguf

    writer = gguf.GGUFWriter(str(path), arch=arch)
    quantized = 0
    for key, tensor in state_dict.items():
        array = tensor.float().numpy()
        if array.ndim == 2 and array.shape[1] % 32 == 0:
            blocks = gguf.quants.quantize(array, gguf.GGMLQuantizationType.Q8_0)
            writer.add_tensor(key, blocks, raw_shape=blocks.shape, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
            quantized += 1
        else:
            writer.add_tensor(key, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return quantized, len(state_dict)


QWEN3_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n{% endif %}{% endif %}"
)
"""Qwen3's chat template, reduced to what `Flux2KleinPipeline` uses (one user message, thinking switched off)."""


def tiny_klein(seed: int = 0, distilled: bool = True):
    """A Flux2KleinPipeline (FLUX.2 [klein]) with tiny random weights, built fully in code: a Qwen3 text encoder
    deep enough for klein's hidden-state layers 9, 18 and 27, a Flux2 VAE (downsampling by 8, batch-norm
    statistics set away from 0 and 1 so the normalisation shows) and a Flux2 transformer with 4-axis rope."""
    from diffusers import (
        AutoencoderKLFlux2,
        FlowMatchEulerDiscreteScheduler,
        Flux2KleinPipeline,
        Flux2Transformer2DModel,
    )
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(seed)
    tokenizer = tiny_qwen_tokenizer()
    tokenizer.chat_template = QWEN3_CHAT_TEMPLATE
    tid = tokenizer.convert_tokens_to_ids
    text_encoder = Qwen3ForCausalLM(Qwen3Config(
        vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=27, num_attention_heads=2,
        num_key_value_heads=1, head_dim=8, max_position_embeddings=1024, rope_theta=1_000_000.0,
        bos_token_id=tid("<|endoftext|>"), eos_token_id=tid("<|im_end|>"), pad_token_id=tid("<|endoftext|>"),
        tie_word_embeddings=True,
    ))
    latent = 4
    transformer = Flux2Transformer2DModel(
        patch_size=1, in_channels=4 * latent, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=3 * 16, timestep_guidance_channels=32, mlp_ratio=3.0,
        axes_dims_rope=(4, 4, 4, 4), rope_theta=2000, guidance_embeds=False,
    )
    vae = AutoencoderKLFlux2(
        latent_channels=latent, block_out_channels=(8, 8, 8, 8), layers_per_block=1, norm_num_groups=4,
        use_quant_conv=False, use_post_quant_conv=False, mid_block_add_attention=False,
    )
    with torch.no_grad():
        vae.bn.running_mean.copy_(torch.randn(4 * latent) * 0.3)
        vae.bn.running_var.copy_(torch.rand(4 * latent) + 0.5)
    scheduler = FlowMatchEulerDiscreteScheduler(  # klein's scheduler_config.json
        num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
        base_image_seq_len=256, max_image_seq_len=4096, time_shift_type="exponential",
    )
    return Flux2KleinPipeline(scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                              transformer=transformer, is_distilled=distilled)


def save_tiny_klein(folder: Path, seed: int = 0, distilled: bool = True) -> Path:
    tiny_klein(seed, distilled).save_pretrained(folder, safe_serialization=True)
    return folder


def flux2_to_bfl(state_dict: dict) -> dict:
    """A diffusers Flux2Transformer2DModel state dict in Black Forest Labs' original key layout (fused qkv, `lin`,
    `scale`, final layer's (shift, scale) order): the layout of released FLUX.2 checkpoints and their community
    GGUF files, which diffusers' single-file loader converts back (`convert_flux2_transformer_checkpoint_to_diffusers`;
    unlike FLUX.1's converter it does not assume the real widths, so a tiny model round-trips)."""
    import torch

    renames = {
        "x_embedder": "img_in", "context_embedder": "txt_in", "proj_out": "final_layer.linear",
        "time_guidance_embed.timestep_embedder.linear_1": "time_in.in_layer",
        "time_guidance_embed.timestep_embedder.linear_2": "time_in.out_layer",
        "time_guidance_embed.guidance_embedder.linear_1": "guidance_in.in_layer",
        "time_guidance_embed.guidance_embedder.linear_2": "guidance_in.out_layer",
        "double_stream_modulation_img.linear": "double_stream_modulation_img.lin",
        "double_stream_modulation_txt.linear": "double_stream_modulation_txt.lin",
        "single_stream_modulation.linear": "single_stream_modulation.lin",
    }
    double = {"attn.norm_q.weight": "img_attn.norm.query_norm.scale",
              "attn.norm_k.weight": "img_attn.norm.key_norm.scale", "attn.to_out.0": "img_attn.proj",
              "ff.linear_in": "img_mlp.0", "ff.linear_out": "img_mlp.2",
              "attn.norm_added_q.weight": "txt_attn.norm.query_norm.scale",
              "attn.norm_added_k.weight": "txt_attn.norm.key_norm.scale", "attn.to_add_out": "txt_attn.proj",
              "ff_context.linear_in": "txt_mlp.0", "ff_context.linear_out": "txt_mlp.2"}
    single = {"attn.to_qkv_mlp_proj": "linear1", "attn.to_out": "linear2",
              "attn.norm_q.weight": "norm.query_norm.scale", "attn.norm_k.weight": "norm.key_norm.scale"}
    out: dict = {}
    state = dict(state_dict)
    for key in [k for k in state if k.startswith("transformer_blocks.")]:
        _, n, rest = key.split(".", 2)
        for stream, names in (("img", ("to_q", "to_k", "to_v")), ("txt", ("add_q_proj", "add_k_proj", "add_v_proj"))):
            for param in ("weight", "bias"):
                if rest == f"attn.{names[0]}.{param}":
                    out[f"double_blocks.{n}.{stream}_attn.qkv.{param}"] = torch.cat(
                        [state.pop(f"transformer_blocks.{n}.attn.{name}.{param}") for name in names])
    for key in list(state):
        value = state.pop(key)
        if key.startswith("transformer_blocks."):
            _, n, rest = key.split(".", 2)
            stem = next(s for s in sorted(double, key=len, reverse=True) if rest.startswith(s))
            out[f"double_blocks.{n}.{double[stem]}{rest[len(stem):]}"] = value
        elif key.startswith("single_transformer_blocks."):
            _, n, rest = key.split(".", 2)
            stem = next(s for s in sorted(single, key=len, reverse=True) if rest.startswith(s))
            out[f"single_blocks.{n}.{single[stem]}{rest[len(stem):]}"] = value
        elif key.startswith("norm_out.linear."):
            scale, shift = value.chunk(2, dim=0)
            out[key.replace("norm_out.linear", "final_layer.adaLN_modulation.1")] = torch.cat([shift, scale])
        else:
            stem = next(s for s in sorted(renames, key=len, reverse=True) if key.startswith(s))
            out[renames[stem] + key[len(stem):]] = value
    return out
