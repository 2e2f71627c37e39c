"""The sprites evaluation's figures: canvas previews and grids of pictures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ...canvas import Canvas


def canvas_preview(canvas: Canvas) -> Image.Image:
    """The canvas as an editor shows it: layers over a checkerboard, locked outlined green, unlocked orange."""
    w, h = canvas.generation_size
    yy, xx = np.mgrid[:h, :w]
    checker = np.where(((yy // 8) + (xx // 8)) % 2 == 0, 225, 190).astype(np.uint8)
    base = Image.fromarray(np.stack([checker] * 3 + [np.full_like(checker, 255)], -1), "RGBA")
    out = Image.alpha_composite(base, canvas.flatten((w, h)))
    draw = ImageDraw.Draw(out)
    for layer in canvas.visible_layers():
        if layer.kind == "background":
            if layer.locked:
                draw.rectangle((1, 1, w - 2, h - 2), outline=(40, 200, 80, 255), width=2)
            continue
        box = canvas.render_layer(layer, (w, h)).getchannel("A").getbbox()
        if box:
            colour = (40, 200, 80, 255) if layer.locked else (255, 150, 20, 255)
            draw.rectangle((box[0], box[1], box[2] - 1, box[3] - 1), outline=colour, width=2)
    return out.convert("RGB")


def _fit(size: tuple[int, int], cell: int) -> tuple[int, int]:
    """`size` scaled to fit a cell x cell square, aspect kept (a square becomes the whole cell)."""
    w, h = size
    scale = cell / max(w, h)
    return max(1, round(w * scale)), max(1, round(h * scale))


def figure_grid(rows: list[list[Image.Image]], header: list[str], out: Path, cell: int = 192) -> Path:
    """A grid of pictures with a header row of column titles, saved as PNG. Pictures keep their aspect: each
    fits a cell x cell square, and a row of wide pictures is only as tall as its tallest one."""
    pad, head = 4, 22
    cols = len(header)
    heights = [max((_fit(pic.size, cell)[1] for pic in row), default=cell) for row in rows]
    grid = Image.new("RGB", (cols * (cell + pad) + pad, head + sum(h + pad for h in heights) + pad), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    for c, title in enumerate(header):
        draw.text((pad + c * (cell + pad) + 4, 5), title, fill=(0, 0, 0))
    top = head + pad
    for row, row_h in zip(rows, heights, strict=True):
        for c, pic in enumerate(row):
            w, h = _fit(pic.size, cell)
            grid.paste(pic.resize((w, h), Image.Resampling.LANCZOS),
                       (pad + c * (cell + pad) + (cell - w) // 2, top + (row_h - h) // 2))
        top += row_h + pad
    out.parent.mkdir(parents=True, exist_ok=True)
    grid.save(out)
    return out


def examples_figure(model: str, examples: Path, out: Path, steps: int = 28, seed: int = 0,
                    collage_model: str | None = None, strength: float | None = None) -> Path:
    """A grid of the example canvases: canvas | (collage model) | layered model | (layered model at
    `strength`, image-to-image) | target (when known)."""
    from ...canvas import load_canvas
    from ...pipeline import LayerComposerPipeline

    pipe = LayerComposerPipeline.from_pretrained(model)
    collage_pipe = LayerComposerPipeline.from_pretrained(collage_model) if collage_model else None
    rows = []
    for path in sorted(examples.glob("*.json")):
        canvas = load_canvas(path)
        row = [canvas_preview(canvas)]
        if collage_pipe is not None:
            row.append(collage_pipe(canvas, num_inference_steps=steps, seed=seed, mode="collage"))
        row.append(pipe(canvas, num_inference_steps=steps, seed=seed))
        if strength is not None:
            row.append(pipe(canvas, num_inference_steps=steps, seed=seed, strength=strength))
        target = examples / "targets" / f"{path.stem}.png"
        row.append(Image.open(target).convert("RGB") if target.is_file() else Image.new("RGB", row[0].size, "white"))
        rows.append(row)
    header = ["canvas (green locked)", *(["collage model"] if collage_pipe else []), "layered model",
              *([f"strength {strength:g}"] if strength is not None else []), "target"]
    return figure_grid(rows, header, out, cell=224)
