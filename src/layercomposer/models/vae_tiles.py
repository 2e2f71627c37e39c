"""A VAE decode that a cancel can stop: large latents are decoded tile by tile, with a check between tiles.

One `vae.decode` of a 4096 px canvas runs for minutes on a CPU and cannot be interrupted. Above
`TILE_LATENTS` latents on a side, `decode_latents` decodes the way diffusers' `AutoencoderKL.tiled_decode`
does (overlapping tiles, blended where they overlap: the same result as diffusers' tiled decoding with these
tile sizes) and calls `check()` before each tile, so a cancelled job stops within one tile. Smaller latents
take one `vae.decode`, as before, so ordinary canvases decode exactly as they always did.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

TILE_LATENTS = 128
"""Latents are tiled above this many on a side (1024 px at the usual 8x downsampling)."""
OVERLAP = 0.25
"""Share of a tile that overlaps its neighbour (diffusers' `tile_overlap_factor`)."""


def decode_latents(vae, latents: torch.Tensor, check: Callable[[], None] | None = None,
                   tile: int | None = None) -> torch.Tensor:
    """`vae.decode(latents).sample`; for latents larger than `tile` (default `TILE_LATENTS`) on a side, tile by
    tile with `check()` before each tile (diffusers' tiled decoding with tiles of `tile` latents and
    `OVERLAP`)."""
    tile = TILE_LATENTS if tile is None else tile
    if max(latents.shape[-2:]) <= tile:
        return vae.decode(latents).sample
    scale = 2 ** (len(vae.config.block_out_channels) - 1)
    sample_tile = tile * scale
    step = int(tile * (1 - OVERLAP))
    blend = int(sample_tile * OVERLAP)
    keep = sample_tile - blend
    rows = []
    for i in range(0, latents.shape[2], step):
        row = []
        for j in range(0, latents.shape[3], step):
            if check is not None:
                check()
            row.append(vae.decode(latents[:, :, i:i + tile, j:j + tile]).sample)
        rows.append(row)
    out_rows = []
    for i, row in enumerate(rows):
        parts = []
        for j, piece in enumerate(row):
            if i > 0:
                piece = vae.blend_v(rows[i - 1][j], piece, blend)
            if j > 0:
                piece = vae.blend_h(row[j - 1], piece, blend)
            parts.append(piece[:, :, :keep, :keep])
        out_rows.append(torch.cat(parts, dim=3))
    return torch.cat(out_rows, dim=2)
