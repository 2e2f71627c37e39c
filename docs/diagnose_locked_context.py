"""Locked characters over a background the canvas does not fix: the two measurements quoted in docs/TRAINING.md.

    layercomposer world generate --out /tmp/heldout --scenes 130 --seed 1 --size 256 --split heldout
    python docs/diagnose_locked_context.py /tmp/heldout [--model demo] [--cases 100]

Takes the evaluation's test canvases (`build_cases`, the same seeds as RESULTS.md) whose locked layers are
characters only (the background unlocked or left out) and, for each locked character's visible region in
the target T:

1. The ceiling with the model's own background: T's locked characters pasted over the model's picture, then
   through the VAE and back. If the unknown background itself limited what a perfect copy could reach, this
   would be lower than the usual ceiling (the VAE's reconstruction of T).
2. A context pass: the same canvas once more (same seed), its locked characters replaced by one locked layer
   showing them composited over the model's first picture, on exactly the token cells they had (so the same
   tokens are kept): their edge cells then show the character over a plausible background instead of over
   the grey fill. Also measured on the unlocked characters and the whole picture of the same cases.

Prints means over regions and the paired differences with their standard errors.
"""

from __future__ import annotations

import argparse
import math

import numpy as np
from PIL import Image

from layercomposer.canvas import TOKEN_PX, Layer, LayerImage, alpha_array
from layercomposer.conditioning import flatten_layers, keep_mask
from layercomposer.data.scenes import BACKGROUND, SceneSet
from layercomposer.eval.metrics import psnr
from layercomposer.eval.sprites import build_cases, vae_reconstruction
from layercomposer.pipeline import LayerComposerPipeline


def context_canvas(canvas, picture: Image.Image, prune: str):
    """`canvas` with its locked layers replaced by one locked layer: them over `picture`, on their kept cells."""
    locked = [layer for layer in canvas.visible_layers() if layer.locked]
    group = flatten_layers(canvas, locked)
    keep = keep_mask(alpha_array(group), prune)
    cells = Image.fromarray((np.kron(keep, np.ones((TOKEN_PX, TOKEN_PX))) * 255).astype(np.uint8))
    context = Image.alpha_composite(picture.convert("RGBA"), group)
    context.putalpha(cells)
    out = canvas.copy()
    first = next(i for i, layer in enumerate(out.layers) if layer.locked)
    names = {layer.name for layer in locked}
    out.layers = [layer for layer in out.layers if layer.name not in names]
    out.layers.insert(first, Layer(name="locked-context", image=LayerImage.from_pil(context), locked=True))
    return out


def paired(name: str, rows: list[tuple[float, float]]) -> None:
    a = np.array(rows, dtype=float)
    d = a[:, 1] - a[:, 0]
    se = d.std(ddof=1) / math.sqrt(len(d)) if len(d) > 1 else float("nan")
    print(f"{name} ({len(a)}): {a[:, 0].mean():.2f} -> {a[:, 1].mean():.2f} dB, {d.mean():+.2f} (s.e. {se:.2f}; "
          f"better in {(d > 0).sum()})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("scenes", help="held-out scenes (the evaluation's: --split heldout --seed 1)")
    parser.add_argument("--model", default="demo")
    parser.add_argument("--cases", type=int, default=100, help="evaluation cases to scan")
    args = parser.parse_args()

    pipe = LayerComposerPipeline.from_pretrained(args.model)
    ceiling, own, context, unlocked, whole = [], [], [], [], []
    for case in build_cases(SceneSet.load(args.scenes), args.cases):
        sample, seed = case.sample, 1000 + case.index
        if not sample.locked or BACKGROUND in sample.locked:
            continue
        target = sample.target
        first = pipe.generate(sample.canvas, seed=seed).image
        pasted = first.convert("RGBA")
        scene_image = case.scene.images[sample.image]
        for name in scene_image.order:
            if name in sample.locked:
                pasted = Image.alpha_composite(pasted, scene_image.layer(name))
        vae_t, vae_own = vae_reconstruction(pipe, target), vae_reconstruction(pipe, pasted.convert("RGB"))
        second = pipe.generate(context_canvas(sample.canvas, first, pipe.conditioning.prune), seed=seed).image
        for name in sample.locked:
            mask = case.visible[name]
            if mask.any():
                ceiling.append(psnr(vae_t, target, mask))
                own.append(psnr(vae_own, target, mask))
                context.append((psnr(first, target, mask), psnr(second, target, mask)))
        for name in sample.unlocked:
            if name != BACKGROUND and case.visible[name].any():
                unlocked.append((psnr(first, target, case.visible[name]), psnr(second, target, case.visible[name])))
        whole.append((psnr(first, target), psnr(second, target)))
    print(f"locked characters over a background the canvas does not fix: {len(ceiling)} regions in {len(whole)} "
          f"cases; model {np.mean([a for a, _ in context]):.2f} dB")
    print(f"VAE ceiling (T's own background) {np.mean(ceiling):.2f} dB; with the model's background "
          f"{np.mean(own):.2f} dB")
    paired("context pass, locked characters", context)
    paired("context pass, unlocked characters", unlocked)
    paired("context pass, whole picture", whole)


if __name__ == "__main__":
    main()
