"""Why locked characters are not copied: the two measurements quoted in docs/TRAINING.md.

    layercomposer world generate --out heldscenes --scenes 24 --seed 1 --size 256 --split heldout
    python docs/diagnose_locked_copy.py heldscenes [--model demo] [--canvases 12]

1. Every layer locked (the target is exactly the flattened canvas): PSNR of the model's picture against the
   flattened canvas, on canvases sampled from the scenes as in training with everything locked; then per
   class of 16 px cell (filled by characters, character edges, background only), beside the VAE's own
   reconstruction of the flattened canvas on the same cells (the ceiling).
2. Edge cells: the share of kept character tokens whose 16 px cell the character covers completely; the
   others are composites of the character and what is behind it, which a grey-filled layer does not show.
"""

from __future__ import annotations

import argparse

import numpy as np

from layercomposer.canvas import TOKEN_PX, alpha_array
from layercomposer.data.scenes import SceneSet
from layercomposer.eval.metrics import psnr, to_float
from layercomposer.eval.sprites import vae_reconstruction
from layercomposer.pipeline import LayerComposerPipeline
from layercomposer.training.sampling import SamplingConfig, sample_training_canvas


def _cells(image: np.ndarray) -> np.ndarray:
    """(H, W) -> (rows, cols, 16, 16) token cells."""
    h, w = (image.shape[0] // TOKEN_PX) * TOKEN_PX, (image.shape[1] // TOKEN_PX) * TOKEN_PX
    return image[:h, :w].reshape(h // TOKEN_PX, TOKEN_PX, w // TOKEN_PX, TOKEN_PX).transpose(0, 2, 1, 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("scenes", help="folder of scenes (e.g. held-out ones)")
    parser.add_argument("--model", default="demo")
    parser.add_argument("--canvases", type=int, default=12)
    args = parser.parse_args()
    scenes = SceneSet.load(args.scenes)

    pipe = LayerComposerPipeline.from_pretrained(args.model)
    everything_locked = SamplingConfig(p_lock_none=0.0, p_lock_all=1.0)
    errors: dict[str, dict[str, list[float]]] = {c: {"model": [], "vae": []} for c in ("filled", "edge", "background")}
    for k in range(args.canvases):
        canvas = sample_training_canvas(scenes.scenes[k % len(scenes)], np.random.default_rng([99, k]),
                                        everything_locked).canvas
        flat_image = canvas.flatten().convert("RGB")
        out_image = pipe.generate(canvas, seed=0).image
        vae_image = vae_reconstruction(pipe, flat_image)
        print(f"canvas {k} ({len(canvas.layers) - 1} characters, all locked): model {psnr(out_image, flat_image):.2f}"
              f" dB, VAE {psnr(vae_image, flat_image):.2f} dB against the flattened canvas")
        flat, out, vae = to_float(flat_image), to_float(out_image), to_float(vae_image)
        h, w = flat.shape[:2]
        union = np.zeros((h, w), np.float32)
        for layer in canvas.layers:
            if not layer.is_background:
                union = np.maximum(union, alpha_array(canvas.render_layer(layer, (w, h))))
        cells = _cells(union)
        classes = {"filled": (cells >= 0.999).all(axis=(2, 3)), "background": (cells <= 0.001).all(axis=(2, 3))}
        classes["edge"] = ~classes["filled"] & ~classes["background"]
        for picture, key in ((out, "model"), (vae, "vae")):
            per_cell = _cells(((picture - flat) ** 2).mean(axis=2)).mean(axis=(2, 3))
            for name, where in classes.items():
                errors[name][key] += per_cell[where].tolist()
    for name, found in errors.items():
        model, vae = (10 * np.log10(1 / max(float(np.mean(found[k])), 1e-12)) for k in ("model", "vae"))
        print(f"{name} cells ({len(found['model'])}): model {model:.2f} dB, VAE {vae:.2f} dB ({model - vae:+.2f})")

    kept = interior = 0
    for scene in scenes.scenes:
        for image in scene.images:
            for name in scene.subjects:
                if name not in image.layers:
                    continue
                cells = _cells(np.asarray(image.layer(name).getchannel("A"), np.float32) / 255)
                centre = cells[:, :, TOKEN_PX // 2, TOKEN_PX // 2] > 0.5  # the pruning rule
                full = (cells >= 0.999).all(axis=(2, 3))
                kept += int(centre.sum())
                interior += int((centre & full).sum())
    print(f"kept character tokens: {kept}; cells the character fills completely: {interior} "
          f"({interior / max(kept, 1):.0%}); edge cells: {1 - interior / max(kept, 1):.0%}")


if __name__ == "__main__":
    main()
