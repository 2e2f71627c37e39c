"""Evaluation in the sprites world, where the true target of every canvas is known (docs/DESIGN.md sections 5, 7).

    layercomposer eval sprites --model demo --collage-model demo-collage --scenes 100 --json out.json

Test canvases come from held-out scenes (identities never seen in training) through the training sampler
with its jitter switched off: a target picture T, a seeded random subset of its layers locked (T's own
pixels), the other characters cut from another picture of the scene and placed over T's characters, the
background locked, unlocked or left out. Measured against T:

- locked fidelity: PSNR inside each locked layer's visible region, beside the VAE's own reconstruction of T
  on the same pixels (the ceiling: the model works in that VAE's latent space); again on the part of it
  more than AWAY_PX from any unlocked character (in T or on the canvas), which separates copying the locked
  layer from the unlocked characters' redrawing spilling onto it;
- adaptation: PSNR inside each unlocked character's visible region, beside naive pasting (the flattened
  canvas itself, what a collage without a model gives);
- whole-image PSNR and SSIM; layout (where each unlocked character was drawn, by template matching against
  T, in px); prompt adherence (background and lighting classified from the picture, when not locked);
- ablations: the collage-conditioned model on the same canvases (on locked regions too: what locking is for),
  with the occlusion subset (pixels of a layer that T shows but that another layer covers in the collage),
  split into the pixels of unlocked characters (which both models must redraw) and of locked layers (which
  the layered canvas still holds under the unlocked layer in front and the collage has lost); one character
  locked vs unlocked; pruned vs unpruned conditioning (quality, tokens, seconds per step).

The package reads top down: `cases` (test canvases and their masks) < `figures` (previews and grids) < `summary`
(aggregation, paired differences, targets) < `report` (the Markdown pages) and `runs` (the engines run on the
cases, the report's JSON). The names below are its public interface (the CLI's, scripts/' and the tests').
"""

from __future__ import annotations

from .cases import (
    AWAY_PX,
    EVAL_SAMPLING,
    EVAL_SEED,
    MIN_REVEALED_PIXELS,
    OCCLUSION_SUBSETS,
    SpriteCase,
    build_cases,
    copy_probe_canvas,
    dilate,
    flip_lock,
    paste,
    visible_masks,
)
from .figures import canvas_preview, examples_figure, figure_grid
from .report import missed_targets, occlusion_markdown, results_markdown
from .runs import evaluate_case, run_eval, save_report
from .summary import locked_subjects_by_background, occlusion_call, paired_difference, summarise, targets_met

__all__ = [
    "AWAY_PX", "EVAL_SAMPLING", "EVAL_SEED", "MIN_REVEALED_PIXELS", "OCCLUSION_SUBSETS", "SpriteCase",
    "build_cases", "canvas_preview", "copy_probe_canvas", "dilate", "evaluate_case", "examples_figure",
    "figure_grid", "flip_lock", "locked_subjects_by_background", "missed_targets", "occlusion_call",
    "occlusion_markdown", "paired_difference", "paste", "results_markdown", "run_eval", "save_report",
    "summarise", "targets_met", "visible_masks",
]
