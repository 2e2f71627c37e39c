"""Make docs/figures/photo-workflow.png: photo -> cut-out -> canvas -> generate / refine, through the real CLI.

    python docs/make_photo_figure.py [--out docs/figures/photo-workflow.png]

Uses scikit-image's astronaut portrait (it ships inside scikit-image; nothing is downloaded), cuts her out
with `layercomposer cutout`, writes a canvas that puts the cut-out (locked) on one of the example backgrounds
beside a held-out sprite (unlocked), then runs `layercomposer generate --hard-lock` with the demo model and
`layercomposer refine --model demo-collage`. Prints every command it runs. Needs the `photo` extra.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parent.parent


def run(*args: str) -> None:
    print("$ " + shlex.join(["layercomposer", *args]), file=sys.stderr)
    subprocess.run([sys.executable, "-m", "layercomposer", *args], check=True)  # this interpreter's package


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(ROOT / "docs" / "figures" / "photo-workflow.png"))
    parser.add_argument("--steps", type=int, default=28)
    args = parser.parse_args(argv)
    from skimage import data

    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        photo = t / "astronaut.png"
        Image.fromarray(data.astronaut()).save(photo)
        run("cutout", str(photo), "-o", str(t / "astronaut-layer.png"))
        layer = Image.open(t / "astronaut-layer.png")
        for name in ("background.png", "c00149.png"):
            Image.open(ROOT / "examples" / "images" / name).save(t / name)
        scale = 150 / layer.height
        canvas = {
            "version": 1, "width": 256, "height": 256,
            "prompt": "an astronaut and a sprite on a beach in daylight",
            "layers": [
                {"name": "beach", "image": "background.png", "kind": "background", "locked": True},
                {"name": "astronaut", "image": "astronaut-layer.png", "x": 20, "y": 256 - 150 - 10,
                 "scale": round(scale, 4), "locked": True},
                {"name": "sprite", "image": "c00149.png", "x": 150, "y": 140, "scale": 0.9, "locked": False},
            ],
        }
        (t / "canvas.json").write_text(json.dumps(canvas, indent=2))
        run("flatten", str(t / "canvas.json"), "-o", str(t / "collage.png"))
        run("generate", str(t / "canvas.json"), "-o", str(t / "generated.png"), "--hard-lock",
            "--steps", str(args.steps))
        run("refine", str(t / "canvas.json"), "-o", str(t / "refined.png"), "--model", "demo-collage",
            "--steps", str(args.steps))

        cell, pad, head = 224, 6, 24
        panels = [
            ("photo", Image.open(photo)),
            ("cutout", Image.open(t / "astronaut-layer.png")),
            ("canvas (flattened)", Image.open(t / "collage.png")),
            ("generate --hard-lock", Image.open(t / "generated.png")),
            ("refine (demo-collage)", Image.open(t / "refined.png")),
        ]
        fig = Image.new("RGB", (len(panels) * (cell + pad) + pad, cell + head + pad), "white")
        draw = ImageDraw.Draw(fig)
        for i, (title, pic) in enumerate(panels):
            pic = pic.convert("RGBA")
            pic.thumbnail((cell, cell), Image.Resampling.LANCZOS)
            checker = Image.new("RGBA", pic.size, (230, 230, 230, 255))
            tile = Image.alpha_composite(checker, pic).convert("RGB")
            x = pad + i * (cell + pad)
            fig.paste(tile, (x + (cell - tile.width) // 2, head + (cell - tile.height) // 2))
            draw.text((x + 4, 6), title, fill=(0, 0, 0))
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        fig.save(args.out)
        print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
