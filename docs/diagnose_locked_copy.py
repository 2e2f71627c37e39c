"""Why locked characters are not copied: the two measurements quoted in docs/TRAINING.md.

    layercomposer world generate --out heldscenes --scenes 24 --seed 1 --size 256 --split heldout
    python docs/diagnose_locked_copy.py heldscenes [--model demo] [--canvases 6]

1. Every layer locked (the target is exactly the flattened canvas): PSNR of the model's picture against the
   flattened canvas, on canvases sampled from the scenes as in training with everything locked.
2. Edge cells: the share of kept character tokens whose 16 px cell the character covers completely; the
   others are composites of the character and what is behind it, which a grey-filled layer does not show.
"""

from __future__ import annotations

import argparse

import numpy as np

from layercomposer.canvas import TOKEN_PX
from layercomposer.data.scenes import SceneSet
from layercomposer.pipeline import LayerComposerPipeline
from layercomposer.training.sampling import SamplingConfig, sample_training_canvas


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(1 / max(float(((a - b) ** 2).mean()), 1e-12)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("scenes", help="folder of scenes (e.g. held-out ones)")
    parser.add_argument("--model", default="demo")
    parser.add_argument("--canvases", type=int, default=6)
    args = parser.parse_args()
    scenes = SceneSet.load(args.scenes)

    pipe = LayerComposerPipeline.from_pretrained(args.model)
    everything_locked = SamplingConfig(p_lock_none=0.0, p_lock_all=1.0)
    for k in range(args.canvases):
        sample = sample_training_canvas(scenes.scenes[k % len(scenes)], np.random.default_rng([99, k]),
                                        everything_locked)
        flat = np.asarray(sample.canvas.flatten().convert("RGB"), np.float32) / 255
        out = np.asarray(pipe.generate(sample.canvas, seed=0).image.convert("RGB"), np.float32) / 255
        subjects = len(sample.canvas.layers) - 1
        print(f"canvas {k} ({subjects} characters, all locked): {psnr(out, flat):.2f} dB against the flattened canvas")

    kept = interior = 0
    for scene in scenes.scenes:
        for image in scene.images:
            for name in scene.subjects:
                if name not in image.layers:
                    continue
                alpha = np.asarray(image.layer(name).getchannel("A"), np.float32) / 255
                h, w = (alpha.shape[0] // TOKEN_PX) * TOKEN_PX, (alpha.shape[1] // TOKEN_PX) * TOKEN_PX
                cells = alpha[:h, :w].reshape(h // TOKEN_PX, TOKEN_PX, w // TOKEN_PX, TOKEN_PX).transpose(0, 2, 1, 3)
                centre = cells[:, :, TOKEN_PX // 2, TOKEN_PX // 2] > 0.5  # the pruning rule
                full = (cells >= 0.999).all(axis=(2, 3))
                kept += int(centre.sum())
                interior += int((centre & full).sum())
    print(f"kept character tokens: {kept}; cells the character fills completely: {interior} "
          f"({interior / max(kept, 1):.0%}); edge cells: {1 - interior / max(kept, 1):.0%}")


if __name__ == "__main__":
    main()
