"""Named model configurations (the `--model` choices) and how a name or directory becomes components."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from ..conditioning import TokenRules
from ..errors import LayerComposerError, ModelError
from ..flow import FlowSchedule

WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"
"""Models shipped inside the package (`demo`, `demo-collage` once trained)."""

BASIC_VOCABULARY: tuple[str, ...] = tuple(
    """
    a an the and with of in on at under over near by one two three four five six many sprite sprites
    character characters person people friend friends red orange yellow green blue purple pink brown
    black white grey gray gold teal round tall small big square star striped spotted plain happy sad
    surprised beach city forest meadow snow desert room park street sky sea mountain day night
    sunset sunrise morning evening overcast light dark standing sitting jumping waving laughing
    smiling together photo picture scene
    """.split()  # noqa: SIM905 (a word list reads best as words)
)


def _frozen(d: Mapping[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType(dict(d))


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to build a model from scratch: component configs and sampling defaults."""

    name: str
    description: str
    transformer: Mapping[str, Any]
    """FluxTransformer2DModel config."""
    vae: Mapping[str, Any]
    """AutoencoderKL config."""
    text_encoder: Mapping[str, Any]
    """CLIPTextConfig (vocab_size is set from the vocabulary)."""
    vocabulary: tuple[str, ...] = BASIC_VOCABULARY
    """The text tokenizer's words besides its special tokens (see `tokenizer_words`)."""
    with_world_vocabulary: bool = False
    """Put every word a sprites-world prompt can contain before `vocabulary` (the demo models' tokenizer)."""
    max_text_length: int = 32
    schedule: FlowSchedule = field(default_factory=FlowSchedule)
    guidance_scale: float = 2.5
    default_steps: int = 28

    def tokenizer_words(self) -> tuple[str, ...]:
        """The tokenizer's words in id order. The sprites world is imported here, when a model is built, not
        when this module is: the registry sits below the world's data."""
        if not self.with_world_vocabulary:
            return self.vocabulary
        from ..world.prompts import VOCABULARY

        return tuple(dict.fromkeys([*VOCABULARY, *self.vocabulary]))


TINY_RANDOM = ModelConfig(
    name="tiny-random",
    description="a tiny randomly initialised model (seconds on a CPU); for tests and plumbing, makes noise",
    transformer=_frozen(
        dict(
            patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16,
            num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, guidance_embeds=True,
            axes_dims_rope=(4, 6, 6),
        )
    ),
    vae=_frozen(
        dict(
            in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1, norm_num_groups=4,
            block_out_channels=(8, 16, 16, 16),
            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
            scaling_factor=0.3611, shift_factor=0.1159, use_quant_conv=False, use_post_quant_conv=False,
            # The mid-block attention is global over H/8 x W/8 positions: quadratic, and not needed here.
            mid_block_add_attention=False,
        )
    ),
    text_encoder=_frozen(
        dict(
            hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
            max_position_embeddings=32, projection_dim=32,
        )
    ),
)

DEMO_BASE = ModelConfig(
    name="demo-base",
    description="the demo model's architecture, untrained (what `layercomposer train` starts the demo from)",
    # Sizes chosen by measurement on a 2-core CPU (docs/TRAINING.md): ~0.5 s per training step of 4 canvases
    # at 256 px, ~35 ms per sampling step, 5.2 M parameters (10 MB in float16).
    transformer=_frozen(
        dict(
            patch_size=1, in_channels=64, num_layers=2, num_single_layers=4, attention_head_dim=32,
            num_attention_heads=6, joint_attention_dim=128, pooled_projection_dim=128, guidance_embeds=False,
            axes_dims_rope=(8, 12, 12),
        )
    ),
    vae=_frozen(
        dict(
            in_channels=3, out_channels=3, latent_channels=16, layers_per_block=1, norm_num_groups=16,
            block_out_channels=(32, 64, 64, 64),
            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
            scaling_factor=1.0, shift_factor=0.0, use_quant_conv=False, use_post_quant_conv=False,
            mid_block_add_attention=False,
        )
    ),
    text_encoder=_frozen(
        dict(
            hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
            max_position_embeddings=64, projection_dim=128,
        )
    ),
    with_world_vocabulary=True,
    max_text_length=64,
    guidance_scale=1.0,
)

REGISTRY: dict[str, ModelConfig] = {TINY_RANDOM.name: TINY_RANDOM, DEMO_BASE.name: DEMO_BASE}


def shipped_models() -> dict[str, Path]:
    """Trained models inside the installed package, by name."""
    if not WEIGHTS_DIR.is_dir():
        return {}
    return {p.name: p for p in sorted(WEIGHTS_DIR.iterdir()) if (p / "model_index.json").is_file()}


def model_choices() -> list[str]:
    """Every name `--model` accepts besides a directory."""
    return sorted({*REGISTRY, *shipped_models()})


def resolve_model(model: str | Path) -> ModelConfig | Path:
    """A registered config to build, or a directory to load; a clear error otherwise."""
    if isinstance(model, str) and model in REGISTRY:
        return REGISTRY[model]
    shipped = shipped_models()
    if isinstance(model, str) and model in shipped:
        return shipped[model]
    path = Path(model)
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise ModelError(f"{path}: not a model directory (model_index.json missing)")
        return path
    if path.exists():
        raise ModelError(f"{path}: a model must be a directory, not a file")
    if isinstance(model, str) and HUB_ID.match(model):
        return cached_hub_model(model)
    raise ModelError(f"unknown model {str(model)!r}: use one of {', '.join(model_choices())} or a model directory")


def token_rules(model: str | Path) -> TokenRules:
    """How `model` turns canvases into tokens (model_index.json `merge_locked_layers`, `prune_rule`), read
    without loading weights; the default rules (docs/DESIGN.md section 3) for registered configs and for anything
    that does not resolve or read (loading it reports that)."""
    try:
        resolved = resolve_model(model)
        if isinstance(resolved, ModelConfig):
            return TokenRules()
        return TokenRules.from_index(json.loads((resolved / "model_index.json").read_text()))
    except (LayerComposerError, OSError, ValueError):
        return TokenRules()


HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def cached_hub_model(repo_id: str) -> Path:
    """The folder of a hub model already in the local Hugging Face cache (HF_HOME / HF_HUB_CACHE); never
    downloads. A missing model is a one-line error naming it and the command that fetches it."""
    from huggingface_hub import constants, snapshot_download

    try:
        folder = Path(snapshot_download(repo_id, local_files_only=True))
    except Exception:  # huggingface_hub raises several types for "not there"; all mean the same here
        raise ModelError(
            f"model {repo_id!r} is not in the local Hugging Face cache ({constants.HF_HUB_CACHE}); "
            f"fetch it first with: hf download {repo_id}"
        ) from None
    if not (folder / "model_index.json").is_file():
        raise ModelError(f"model {repo_id!r} in the cache ({folder}) has no model_index.json (not a pipeline)")
    return folder


def build_random(config: ModelConfig, seed: int = 0):  # -> (FluxTransformer2DModel, AutoencoderKL, ClipTextEncoder)
    """Build a config's components with random weights, reproducibly from `seed`, fully offline."""
    import torch
    from diffusers import AutoencoderKL, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from .text import BOS_ID, EOS_ID, PAD_ID, ClipTextEncoder, build_word_tokenizer

    tokenizer = build_word_tokenizer(config.tokenizer_words(), config.max_text_length)
    text_config = CLIPTextConfig(
        vocab_size=len(tokenizer), pad_token_id=PAD_ID, bos_token_id=BOS_ID, eos_token_id=EOS_ID,
        **config.text_encoder,
    )
    fork = torch.random.fork_rng(devices=[])
    with fork:
        torch.manual_seed(seed)
        transformer = FluxTransformer2DModel(**config.transformer)
        vae = AutoencoderKL(**config.vae)
        text_model = CLIPTextModel(text_config)
    return transformer, vae, ClipTextEncoder(text_model, tokenizer, config.max_text_length)
