"""Deepen a demo model's transformer without changing what it computes: the depth experiment of
docs/TRAINING.md's identity table.

    python scripts/grow_depth.py src/layercomposer/weights/demo runs/demo-deep --single 4 [--double 0]

Copies the model folder and appends `--single` single-stream blocks (and `--double` double-stream blocks after
the existing ones), each a copy of the last block of its kind with its output projection zeroed. A FLUX block
adds `gate * proj_out(...)` (double blocks: `gate * attn_out` and `gate * ff(...)`) to its residual stream, so
a zeroed output projection makes the new block the identity at first: the grown model gives the same velocity
as the original (checked here) and fine-tuning starts from the same function with more depth to use.
"""

from __future__ import annotations

import argparse
import copy
import shutil
from pathlib import Path

import torch
from diffusers import FluxTransformer2DModel


def _zero(*modules: torch.nn.Module) -> None:
    for m in modules:
        for p in m.parameters():
            torch.nn.init.zeros_(p)


def grow(model: FluxTransformer2DModel, single: int, double: int) -> FluxTransformer2DModel:
    """Append `double` double-stream and `single` single-stream blocks that start as the identity."""
    for _ in range(double):
        block = copy.deepcopy(model.transformer_blocks[-1])
        _zero(block.attn.to_out[0], block.attn.to_add_out, block.ff.net[-1], block.ff_context.net[-1])
        model.transformer_blocks.append(block)
    for _ in range(single):
        block = copy.deepcopy(model.single_transformer_blocks[-1])
        _zero(block.proj_out)
        model.single_transformer_blocks.append(block)
    model.register_to_config(num_layers=len(model.transformer_blocks),
                             num_single_layers=len(model.single_transformer_blocks))
    return model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", type=Path, help="a model folder (model_index.json, transformer/, ...)")
    p.add_argument("out", type=Path)
    p.add_argument("--single", type=int, default=4, help="single-stream blocks to append")
    p.add_argument("--double", type=int, default=0, help="double-stream blocks to append")
    args = p.parse_args()
    if args.out.exists():
        raise SystemExit(f"{args.out}: exists")
    base = FluxTransformer2DModel.from_pretrained(args.model / "transformer", torch_dtype=torch.float32)
    grown = grow(copy.deepcopy(base), args.single, args.double)
    # The grown model computes what the original does.
    g = torch.Generator().manual_seed(0)
    cfg = base.config
    x = torch.randn(1, 16, cfg.in_channels, generator=g)
    ids = torch.zeros(16, 3)
    ids[:, 1], ids[:, 2] = torch.arange(16) // 4, torch.arange(16) % 4
    kw = dict(hidden_states=x, encoder_hidden_states=torch.randn(1, 4, cfg.joint_attention_dim, generator=g),
              pooled_projections=torch.randn(1, cfg.pooled_projection_dim, generator=g),
              timestep=torch.tensor([0.5]), img_ids=ids, txt_ids=torch.zeros(4, 3), return_dict=False)
    with torch.no_grad():
        diff = (base(**kw)[0] - grown(**kw)[0]).abs().max().item()
    if diff > 1e-5:
        raise SystemExit(f"grown model differs from the original by {diff:g}")
    shutil.copytree(args.model, args.out)
    shutil.rmtree(args.out / "transformer")
    grown.save_pretrained(args.out / "transformer", safe_serialization=True)
    n0 = sum(t.numel() for t in base.parameters())
    n1 = sum(t.numel() for t in grown.parameters())
    print(f"{args.out}: {cfg.num_layers}+{cfg.num_single_layers} -> {grown.config.num_layers}+"
          f"{grown.config.num_single_layers} blocks, {n0 / 1e6:.2f} M -> {n1 / 1e6:.2f} M parameters, "
          f"same output to {diff:.1e}")


if __name__ == "__main__":
    main()
