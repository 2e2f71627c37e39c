"""Training settings as dataclasses, and the command-line flags that map onto them (no torch import here)."""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from ..conditioning import MODES, PRUNE_RULES
from ..data.canvas_sampling import SamplingConfig
from ..errors import LayerComposerError


@dataclass
class TrainConfig:
    """Every setting of a training run (saved as `config.json` in the run folder)."""

    data: str
    output: str
    model: str = "demo-base"
    vae: str | None = None
    mode: str = "layered"
    merge_locked: bool | None = None
    """Locked layers flattened into one token group (conditioning's module docstring); None: as the base
    model was trained (False for a registered config or a FLUX folder). Written into the exported model."""
    prune: str | None = None
    """Pruning rule, `centre` or `cover` (docs/DESIGN.md section 3); None: as the base model
    was trained. Written into the exported model."""
    steps: int = 1000
    batch_size: int = 4
    grad_accum: int = 1
    lr: float = 3e-4
    warmup: int = 100
    lr_schedule: str = "constant"
    """After the warm-up: `constant` (the paper), or `linear` / `cosine` decay to zero at the last step."""
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    lora_rank: int = 0
    lora_alpha: float | None = None
    quantize: str | None = None
    """Load the frozen base transformer quantized (int8, fp8, nf4; `models.lowmem`): a LoRA run's memory path."""
    gguf: str | None = None
    """Read the frozen base transformer from this GGUF file (a LoRA run)."""
    attention_backend: str | None = None
    """diffusers' attention kernel for the padded-batch processors (flash_varlen skips the padding); None: SDPA."""
    train_text_encoder: bool = False
    prompt_dropout: float = 0.1
    guidance: float = 1.0
    mixed_precision: str = "no"
    gradient_checkpointing: bool = False
    compile: bool = False
    """torch.compile the transformer (dynamic shapes: batches differ in condition tokens)."""
    seed: int = 0
    save_every: int = 500
    keep_checkpoints: int = 2
    log_every: int = 10
    eval_data: str | None = None
    eval_every: int = 250
    eval_samples: int = 16
    export_dtype: str = "float32"
    sample_pool: int = 0
    """0: a fresh canvas for every draw. P > 0: draws pick from P canvases, each encoded once and kept."""
    pool_cache: str | None = None
    """With a sample pool: also keep the encoded canvases in this folder, read back by resumed or later runs."""
    ema_decay: float = 0.0
    """0: off. Else an EMA of the trained weights is kept, saved, evaluated and exported."""
    subject_loss_weight: float = 1.0
    """Loss weight of the noisy tokens whose cell shows a subject in the target (1: the plain mean). The
    held-out loss stays the plain mean, so runs with and without it compare."""
    resolution: int | None = None
    """Train at this square size (scenes resized to cover it and centre-cropped); None: their own size."""
    base: str | None = None
    """A FLUX.1 Kontext folder to train a LayerComposer LoRA on, with the paper's preset (`KONTEXT_PRESET`)."""
    sampling: SamplingConfig = field(default_factory=SamplingConfig)

    @property
    def run(self) -> Path:
        return Path(self.output)


LR_SCHEDULES = ("constant", "linear", "cosine")


def lr_factor(step: int, *, warmup: int, steps: int, schedule: str = "constant") -> float:
    """Multiplier of the base learning rate at optimizer step `step` (0-based): linear warm-up over `warmup`
    steps to 1, then constant, or a linear / cosine decay that reaches 0 one step after the last."""
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    span = max(1, steps - warmup)
    done = min(1.0, (step - warmup) / span)
    if schedule == "linear":
        return 1.0 - done
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * done))
    raise LayerComposerError(f"lr schedule: one of {', '.join(LR_SCHEDULES)}, got {schedule!r}")


KONTEXT_PRESET = {
    # The paper's training of LayerComposer on FLUX.1 Kontext: a rank-512 LoRA on the attention projections,
    # AdamW at a constant 1e-4, 512 px, bf16; gradient checkpointing to fit a 12B transformer.
    "lora_rank": 512, "lr": 1e-4, "resolution": 512, "mixed_precision": "bf16", "gradient_checkpointing": True,
    "guidance": 1.0, "warmup": 0,
}


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    d = TrainConfig(data="", output="")
    parser.add_argument("--data", required=True, help="folder of scenes (docs/DESIGN.md section 4 format)")
    parser.add_argument("--output", required=True, help="run folder: checkpoints, metrics, final model")
    parser.add_argument("--model", default=d.model, help="base: a registered config (random init) or a model dir")
    parser.add_argument("--base", default=None, metavar="KONTEXT_OR_KLEIN_DIR",
                        help="train a LoRA on this FLUX.1 Kontext or FLUX.2 [klein] folder with the paper's preset "
                        "(rank 512, lr 1e-4, 512 px, bf16, gradient checkpointing); flags given explicitly still win")
    parser.add_argument("--resolution", type=int, default=None, help="train at this square size (px)")
    parser.add_argument("--vae", default=None, help="AutoencoderKL folder replacing the base's VAE (frozen)")
    parser.add_argument("--mode", default=d.mode, choices=MODES, help="conditioning mode (collage = ablation)")
    parser.add_argument("--merge-locked", action=argparse.BooleanOptionalAction, default=None,
                        help="flatten the locked layers into one token group (default: as the base model was "
                        "trained); the exported model remembers it")
    parser.add_argument("--aligned-unlocked", type=float, default=0.0, metavar="P",
                        help="chance that an unlocked subject is the target's own, in place, colours jittered, "
                        "instead of one from another picture (0: the paper's sampling); teaches copying from "
                        "unlocked layers. The held-out loss always uses the paper's sampling")
    parser.add_argument("--prune", default=None, choices=PRUNE_RULES,
                        help="which grid cells of a layer become tokens: centre (docs/DESIGN.md section 3: the "
                        "cell's centre pixel is opaque) or cover (any pixel of the cell is); default: as the base "
                        "model was trained; the exported model remembers it")
    parser.add_argument("--steps", type=int, default=d.steps, help="optimizer steps")
    parser.add_argument("--batch-size", type=int, default=d.batch_size, help="samples per micro-batch per process")
    parser.add_argument("--grad-accum", type=int, default=d.grad_accum, help="micro-batches per optimizer step")
    parser.add_argument("--lr", type=float, default=d.lr)
    parser.add_argument("--warmup", type=int, default=d.warmup, help="linear warm-up steps")
    parser.add_argument("--lr-schedule", default=d.lr_schedule, choices=LR_SCHEDULES,
                        help="after the warm-up: constant (the paper), or a linear or cosine decay to zero by the "
                        "last step (a cool-down, e.g. to finish training a model)")
    parser.add_argument("--weight-decay", type=float, default=d.weight_decay)
    parser.add_argument("--lora-rank", type=int, default=0, help="LoRA rank on the attention projections; 0 = full")
    parser.add_argument("--lora-alpha", type=float, default=None, help="LoRA alpha (default: the rank)")
    parser.add_argument("--quantize", choices=("int8", "fp8", "nf4"), default=None,
                        help="LoRA runs: load the frozen base transformer quantized (torchao int8 runs on a CPU too; "
                        "fp8 and nf4 need CUDA); the LoRA trains in bf16 (--mixed-precision bf16 is implied)")
    parser.add_argument("--gguf", default=None, metavar="FILE",
                        help="LoRA runs: read the frozen base transformer from this GGUF file")
    parser.add_argument("--attention-backend", default=None, metavar="NAME",
                        help="diffusers' attention kernel: native (PyTorch SDPA, default), flash, flash_varlen (skips "
                        "the padding of mixed batches), _flash_3, sage, ...")
    parser.add_argument("--train-text-encoder", action="store_true", help="also train the text encoder (full)")
    parser.add_argument("--prompt-dropout", type=float, default=d.prompt_dropout, help="chance of an empty prompt")
    parser.add_argument("--guidance", type=float, default=d.guidance, help="guidance embedding value, if any")
    parser.add_argument("--mixed-precision", default=d.mixed_precision, choices=("no", "bf16", "fp16"))
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the transformer (about 100 s once; see docs/TRAINING.md for what it "
                             "saves per step)")
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--save-every", type=int, default=d.save_every, help="checkpoint every N steps")
    parser.add_argument("--log-every", type=int, default=d.log_every)
    parser.add_argument("--eval-data", default=None, help="held-out scenes for an eval loss on fixed samples")
    parser.add_argument("--eval-every", type=int, default=d.eval_every)
    parser.add_argument("--sample-pool", type=int, default=d.sample_pool, metavar="P",
                        help="draw from P seeded canvases, each VAE-encoded once and kept in memory (0: a fresh "
                        "canvas every draw); about 0.15 MB per canvas at 256 px")
    parser.add_argument("--pool-cache", default=None, metavar="DIR",
                        help="with --sample-pool: also write the encoded canvases here (one file each, keyed by "
                        "data, seed, mode, resolution, sampling and VAE), so a resumed or repeated run reads them "
                        "instead of encoding again")
    parser.add_argument("--ema-decay", type=float, default=d.ema_decay,
                        help="keep an exponential moving average of the weights (e.g. 0.999); it is what is "
                        "evaluated and exported (0: off)")
    parser.add_argument("--subject-loss-weight", type=float, default=d.subject_loss_weight, metavar="W",
                        help="weight the loss of the tokens where the target shows a subject (a character, its "
                        "edges included) W times the background's (1: the plain mean over tokens)")
    parser.add_argument("--export-dtype", default=d.export_dtype, choices=("float32", "float16", "bfloat16"),
                        help="dtype of the exported model's weights")


def train_config_from_args(args: argparse.Namespace) -> TrainConfig:
    names = {f.name for f in fields(TrainConfig)} - {"sampling"}
    values = {k: v for k, v in vars(args).items() if k in names}
    if values.get("base"):
        defaults = TrainConfig(data="", output="")
        values["model"] = values["base"]
        for key, preset in KONTEXT_PRESET.items():
            if values.get(key) == getattr(defaults, key):  # left at its default: the preset decides
                values[key] = preset
    aligned = getattr(args, "aligned_unlocked", 0.0)
    if not 0 <= aligned <= 1:
        raise LayerComposerError(f"--aligned-unlocked: a chance in [0, 1], got {aligned}")
    cfg = TrainConfig(**values, sampling=SamplingConfig(p_aligned_unlocked=aligned))
    if (cfg.quantize or cfg.gguf) and cfg.lora_rank < 1:
        raise LayerComposerError("--quantize / --gguf: a quantized base stays frozen; train a LoRA (--lora-rank R)")
    if cfg.quantize and cfg.mixed_precision == "no":
        cfg = replace(cfg, mixed_precision="bf16")  # quantized weights compute in bf16
    if cfg.steps < 1 or cfg.batch_size < 1 or cfg.grad_accum < 1:
        raise LayerComposerError("--steps, --batch-size and --grad-accum must be positive")
    if cfg.warmup < 0:
        raise LayerComposerError(f"--warmup: must be 0 or positive, got {cfg.warmup}")
    if cfg.sample_pool < 0:
        raise LayerComposerError(f"--sample-pool: must be 0 or positive, got {cfg.sample_pool}")
    if cfg.merge_locked and cfg.mode == "collage":
        raise LayerComposerError("--merge-locked: the collage mode has no separate layers to merge")
    if cfg.prune and cfg.mode == "collage":
        raise LayerComposerError("--prune: the collage mode keeps every cell of its one opaque picture")
    if cfg.pool_cache and not cfg.sample_pool:
        raise LayerComposerError("--pool-cache: needs --sample-pool (it stores the pool's encoded canvases)")
    if not (math.isfinite(cfg.subject_loss_weight) and cfg.subject_loss_weight > 0):
        raise LayerComposerError(f"--subject-loss-weight: must be a positive number, got {cfg.subject_loss_weight}")
    if not (cfg.ema_decay == 0 or 0 < cfg.ema_decay < 1):
        raise LayerComposerError(f"--ema-decay: must be 0 (off) or in (0, 1), got {cfg.ema_decay}")
    return cfg


@dataclass
class VaeTrainConfig:
    data: str
    output: str
    model: str = "demo-base"
    """Registered model config whose `vae` section gives the architecture."""
    steps: int = 4000
    batch_size: int = 8
    crop: int = 128
    lr: float = 1e-3
    kl_weight: float = 1e-6
    edge_weight: float = 0.25
    sample_posterior: bool = False
    """Decode a sample of the posterior (a KL-VAE) or its mean (deterministic). With the tiny KL weight, the
    sampling noise shrinks slowly and dominated the error of short CPU runs (measured: 16.1 vs 16.7 dB on
    held-out crops after 200 steps), so the demo trains on the mean."""
    save_every: int = 500
    init: str | None = None
    """Start from this AutoencoderKL folder instead of random weights."""
    decoder_only: bool = False
    """Train only the decoder: the latent space (and a transformer trained on it) stays valid."""
    anchor_weight: float = 0.0
    """With --init and the encoder training: weight of the mean squared distance, in normalised latent units
    (those a transformer sees), between the encoder's latents and those of the --init encoder on the same
    crops. The --init VAE's normalisation is kept, so a transformer trained on it stays close to valid while
    the encoder learns to keep more."""
    layer_share: float = 0.35
    """Share of training crops taken from layers (on the fill colour) rather than pictures."""
    seed: int = 0
    log_every: int = 25
    eval_data: str | None = None


def add_vae_arguments(parser: argparse.ArgumentParser) -> None:
    d = VaeTrainConfig(data="", output="")
    parser.add_argument("--data", required=True, help="folder of scenes")
    parser.add_argument("--output", required=True, help="run folder; the VAE goes to OUTPUT/vae")
    parser.add_argument("--model", default=d.model, help="registered config giving the VAE architecture")
    parser.add_argument("--steps", type=int, default=d.steps)
    parser.add_argument("--batch-size", type=int, default=d.batch_size)
    parser.add_argument("--crop", type=int, default=d.crop, help="training crop size (multiple of 16)")
    parser.add_argument("--lr", type=float, default=d.lr)
    parser.add_argument("--kl-weight", type=float, default=d.kl_weight)
    parser.add_argument("--edge-weight", type=float, default=d.edge_weight, help="image-gradient L1 weight")
    parser.add_argument("--layer-share", type=float, default=d.layer_share,
                        help="share of crops taken from layers (characters on the fill colour) instead of pictures")
    parser.add_argument("--sample-posterior", action="store_true", help="decode posterior samples (KL-VAE)")
    parser.add_argument("--save-every", type=int, default=d.save_every, help="save OUTPUT/vae every N steps")
    parser.add_argument("--init", default=None, help="start from this AutoencoderKL folder")
    parser.add_argument("--decoder-only", action="store_true",
                        help="train the decoder only (keeps the latent space of --init)")
    parser.add_argument("--anchor-weight", type=float, default=d.anchor_weight,
                        help="with --init: train the encoder too, held this close to the --init encoder's "
                             "latents (normalised units; keeps --init's normalisation)")
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--eval-data", default=None, help="held-out scenes for the reconstruction PSNR")


def vae_config_from_args(args: argparse.Namespace) -> VaeTrainConfig:
    names = {f.name for f in fields(VaeTrainConfig)}
    return VaeTrainConfig(**{k: v for k, v in vars(args).items() if k in names})
