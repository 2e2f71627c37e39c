"""`layercomposer eval photos`: the paper's Table 1 on benchmark canvases, for any set of engines.

For each canvas (identity layers and a prompt, as `layercomposer photos canvases` writes them) every engine
renders a picture; each picture is scored on

- identity: faces found in the output are paired one-to-one with the canvas's identity layers (the face of
  each layer's own image is the identity reference) by embedding distance; the cosine similarity of each pair,
  and the face-detection rate (identities with a face in the output). The embedder is ArcFace through
  insightface when that package and its model files are on this machine, else dlib's ResNet from
  face_recognition_models, else the weak hog-colour descriptor; its name heads the column, so numbers from
  different embedders are never mixed;
- prompt alignment: VQAScore (t2v_metrics, with its CLIP-FlanT5 weights in the Hugging Face cache) and CLIPScore
  (a local transformers CLIP folder, ``--clip-model``); "n/a (weights missing)" otherwise;
- image quality: HPSv3 (the ``hpsv3`` package and a local checkpoint, ``--hps-checkpoint``); else "n/a";
- locked-region fidelity (our addition): PSNR between the output and the canvas's own pixels (its flattened
  canvas over white) where the flattened colour comes (99% or more) from locked layers.

Nothing is downloaded: every optional model is used only when its files are already here.
"""

from __future__ import annotations

from .cases import (
    ARCFACE_PACK,
    BENCHMARK_INSTRUCTION,
    ENGINES,
    FACE_SCORE,
    LOCK_MODES,
    LOCKED_WEIGHT,
    NA_WEIGHTS,
    OLD_ENGINE_NAMES,
    PSNR_CAP,
    VQA_MODEL,
    VQA_REPOS,
    EvalOptions,
    Identity,
    Log,
    PhotoCase,
    apply_lock,
    canvas_id,
    canvas_pixels,
    find_canvases,
    load_cases,
    locked_region,
    reference_image,
)
from .run import (
    Engine,
    LayeredEngine,
    PasteEngine,
    RefineEngineAdapter,
    evaluate_photos,
    load_engine,
    parse_engines,
    table_markdown,
)
from .scoring import (
    ArcFaceScorer,
    ClipScore,
    HpsV3,
    IdentityScorer,
    MediapipeScorer,
    Metric,
    VqaScore,
    arcface_folder,
    cosine,
    get_identity_scorer,
    identity_scores,
    prompt_metrics,
)

__all__ = [
    "ARCFACE_PACK",
    "BENCHMARK_INSTRUCTION",
    "ENGINES",
    "FACE_SCORE",
    "LOCKED_WEIGHT",
    "LOCK_MODES",
    "NA_WEIGHTS",
    "OLD_ENGINE_NAMES",
    "PSNR_CAP",
    "VQA_MODEL",
    "VQA_REPOS",
    "ArcFaceScorer",
    "ClipScore",
    "Engine",
    "EvalOptions",
    "HpsV3",
    "Identity",
    "IdentityScorer",
    "LayeredEngine",
    "Log",
    "MediapipeScorer",
    "Metric",
    "PasteEngine",
    "PhotoCase",
    "RefineEngineAdapter",
    "VqaScore",
    "apply_lock",
    "arcface_folder",
    "canvas_id",
    "canvas_pixels",
    "cosine",
    "evaluate_photos",
    "find_canvases",
    "get_identity_scorer",
    "identity_scores",
    "load_cases",
    "load_engine",
    "locked_region",
    "parse_engines",
    "prompt_metrics",
    "reference_image",
    "table_markdown",
]
