"""`eval photos` scores: identity (face embedders) and prompt alignment and quality (VQAScore, CLIPScore, HPSv3)."""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image

from ...errors import LayerComposerError
from ...photo import PhotoError, require
from ...photo.cutout import Face, detect_faces, rgb_array
from ...photo.identity import get_embedder
from .cases import ARCFACE_PACK, FACE_SCORE, VQA_MODEL, VQA_REPOS, EvalOptions, PhotoCase

# ----------------------------------------------------------------------------------------------------------
# Identity


class IdentityScorer(Protocol):
    name: str
    threshold: float
    """Euclidean distance (of the embeddings as given) below which two faces are the same person."""

    def faces(self, image: np.ndarray) -> list[tuple[Face, np.ndarray]]: ...


@dataclass
class MediapipeScorer:
    """MediaPipe face detection + an embedder of `identity.py` (dlib ResNet or hog-colour)."""

    kind: str = "auto"

    def __post_init__(self) -> None:
        self.embedder = get_embedder(self.kind)
        self.name = self.embedder.name
        self.threshold = self.embedder.threshold

    def faces(self, image: np.ndarray) -> list[tuple[Face, np.ndarray]]:
        return [(f, self.embedder(image, f)) for f in detect_faces(image, min_score=FACE_SCORE)]


def arcface_folder(explicit: str | None = None) -> Path | None:
    """The folder of insightface ONNX models to use, or None: `explicit`, else ~/.insightface/models/buffalo_l,
    else the first folder there holding .onnx files."""
    if explicit:
        folder = Path(explicit).expanduser()
        return folder if folder.is_dir() and any(folder.glob("*.onnx")) else None
    base = Path(os.environ.get("INSIGHTFACE_HOME", "~/.insightface")).expanduser() / "models"
    candidates = [base / ARCFACE_PACK, *(sorted(base.iterdir()) if base.is_dir() else [])]
    return next((c for c in candidates if c.is_dir() and any(c.glob("*.onnx"))), None)


class ArcFaceScorer:
    """insightface's own detector (SCRFD / RetinaFace) and ArcFace recogniser from local ONNX files."""

    threshold = 1.0  # normalised embeddings: distance 1.0 is cosine 0.5 (ArcFace's usual same-person bar ~0.3-0.4)

    def __init__(self, folder: Path, device: str | None = None) -> None:
        insightface = require("insightface")
        from insightface import model_zoo

        providers = ["CPUExecutionProvider"]
        if device and device.startswith("cuda"):
            providers.insert(0, "CUDAExecutionProvider")
        self._det = self._rec = None
        for onnx in sorted(folder.glob("*.onnx")):
            try:
                model = model_zoo.get_model(str(onnx), providers=providers)
            except Exception:  # a file insightface does not know: not ours to use
                continue
            task = getattr(model, "taskname", None)
            if task == "detection" and self._det is None:
                self._det = model
            elif task == "recognition" and self._rec is None:
                self._rec = model
        if self._det is None or self._rec is None:
            raise PhotoError(f"--arcface-dir {folder}: needs a detection and a recognition ONNX model "
                             f"(insightface's {ARCFACE_PACK} pack, for example)")
        ctx = 0 if device and device.startswith("cuda") else -1
        self._det.prepare(ctx, input_size=(640, 640), det_thresh=FACE_SCORE)
        self._rec.prepare(ctx)
        self.name = f"arcface ({folder.name}, insightface {getattr(insightface, '__version__', '?')})"

    def faces(self, image: np.ndarray) -> list[tuple[Face, np.ndarray]]:
        from insightface.app.common import Face as InsightFace

        bgr = np.ascontiguousarray(image[..., ::-1])
        boxes, kpss = self._det.detect(bgr, max_num=0, metric="default")
        h, w = image.shape[:2]
        out = []
        for i, row in enumerate(boxes):
            kps = kpss[i] if kpss is not None else None
            face = InsightFace(bbox=row[:4], kps=kps, det_score=float(row[4]))
            emb = np.asarray(self._rec.get(bgr, face), np.float32)
            x0, y0, x1, y1 = (int(np.rint(v)) for v in row[:4])
            box = (max(0, x0), max(0, y0), min(w, x1), min(h, y1))
            points = tuple((float(x), float(y)) for x, y in kps) if kps is not None else ()
            out.append((Face(box, float(row[4]), points), emb / (np.linalg.norm(emb) + 1e-12)))
        return out


def get_identity_scorer(kind: str = "auto", arcface_dir: str | None = None,
                        device: str | None = None) -> IdentityScorer:
    """``auto``: ArcFace when insightface and its model files are here, else dlib, else hog-colour; or the one
    named (``arcface``, ``dlib``, ``hog-colour``): a one-line error when it cannot be used."""
    if kind in ("auto", "arcface"):
        has_package = importlib.util.find_spec("insightface") is not None
        folder = arcface_folder(arcface_dir)
        if has_package and folder is not None:
            return ArcFaceScorer(folder, device)
        if kind == "arcface" or arcface_dir:
            missing = "the insightface package (pip install insightface onnxruntime)" if not has_package else (
                f"its model files ({'--arcface-dir ' + arcface_dir if arcface_dir else '~/.insightface/models/'}"
                f"{ARCFACE_PACK if not arcface_dir else ''} has no .onnx files)")
            raise PhotoError(f"--embedder arcface needs {missing}")
        kind = "auto"
    if kind not in ("auto", "dlib", "hog-colour"):
        raise PhotoError(f"--embedder {kind!r}: must be auto, arcface, dlib or hog-colour")
    return MediapipeScorer(kind)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-12))


def identity_scores(case: PhotoCase, output: Image.Image, scorer: IdentityScorer) -> list[dict[str, Any]]:
    """Per identity of the canvas: the output face paired with it (one-to-one, least total distance), its
    cosine similarity and distance; `detected` is False when no output face is left for it."""
    if not case.identities:
        return []
    found = scorer.faces(rgb_array(output))
    rows = []
    if found:
        from ...photo.identity import assign

        dist = np.array([[float(np.linalg.norm(i.embedding - e)) for _, e in found] for i in case.identities])
        # Every identity gets a face while there are faces (an unpaired identity costs more than any pair).
        chosen = assign(dist, threshold=float(dist.max()) * 10 + 1.0)
    else:
        chosen = [None] * len(case.identities)
    for ident, c in zip(case.identities, chosen, strict=True):
        if c is None:
            rows.append({"layer": ident.layer, "detected": False, "cosine": None, "distance": None,
                         "same_person": False})
            continue
        face, emb = found[c]
        d = float(np.linalg.norm(ident.embedding - emb))
        rows.append({"layer": ident.layer, "detected": True, "cosine": round(cosine(ident.embedding, emb), 5),
                     "distance": round(d, 5), "same_person": d < scorer.threshold, "face": list(face.box)})
    return rows


# ----------------------------------------------------------------------------------------------------------
# Prompt alignment and quality


class Metric:
    """A column scored per output picture; unavailable metrics carry the reason (their cells say n/a)."""

    key = ""
    label = ""
    higher_is_better = True

    def __init__(self) -> None:
        self.name = self.label
        self.reason: str | None = None  # why not available (None: available)

    @property
    def available(self) -> bool:
        return self.reason is None

    def score(self, image: Image.Image, prompt: str) -> float:
        raise NotImplementedError


class ClipScore(Metric):
    """CLIPScore as torchmetrics computes it: 100 * max(cosine(image, text), 0), from a local CLIP folder."""

    key, label = "clipscore", "CLIPScore"

    def __init__(self, folder: str | None, device: str | None = None) -> None:
        super().__init__()
        self.folder = Path(folder).expanduser() if folder else None
        self.device = device or "cpu"
        self._model: Any = None
        if self.folder is None:
            self.reason = "no --clip-model folder given (a transformers CLIP model folder)"
        elif not (self.folder / "config.json").is_file():
            self.reason = f"--clip-model {folder}: no config.json (not a transformers model folder)"
        else:
            self.name = f"CLIPScore ({self.folder.name})"

    def _load(self) -> None:
        from transformers import CLIPModel, CLIPProcessor

        try:
            self._processor = CLIPProcessor.from_pretrained(str(self.folder), local_files_only=True)
            self._model = CLIPModel.from_pretrained(str(self.folder), local_files_only=True).eval().to(self.device)
        except (OSError, ValueError) as exc:
            raise LayerComposerError(f"--clip-model {self.folder}: cannot load a CLIP model "
                                     f"({str(exc).splitlines()[0]})") from None

    def score(self, image: Image.Image, prompt: str) -> float:
        import torch

        if self._model is None:
            self._load()
        tok = self._processor.tokenizer
        text = tok([prompt], padding=True, truncation=True, max_length=min(77, tok.model_max_length),
                   return_tensors="pt")
        pixels = self._processor.image_processor(images=[image.convert("RGB")], return_tensors="pt")
        with torch.no_grad():
            img = self._model.get_image_features(pixel_values=pixels["pixel_values"].to(self.device))
            txt = self._model.get_text_features(input_ids=text["input_ids"].to(self.device),
                                                attention_mask=text["attention_mask"].to(self.device))
        img, txt = _features(img), _features(txt)
        cos = torch.nn.functional.cosine_similarity(img.float(), txt.float()).item()
        return 100.0 * max(cos, 0.0)


def _features(out: Any) -> Any:
    """transformers 5 may return a model output instead of a tensor from get_*_features."""
    if hasattr(out, "pooler_output") and not hasattr(out, "shape"):
        return out.pooler_output
    return out


def _hf_cached(repo: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False
    hit = try_to_load_from_cache(repo, "config.json")
    return isinstance(hit, str)


class VqaScore(Metric):
    """VQAScore (Lin et al. 2024) through t2v_metrics, only with its weights in the Hugging Face cache."""

    key, label = "vqascore", "VQAScore"

    def __init__(self, model: str = VQA_MODEL, device: str | None = None) -> None:
        super().__init__()
        self.model, self.device = model, device or "cpu"
        self._scorer: Any = None
        repo = VQA_REPOS.get(model, model)
        if importlib.util.find_spec("t2v_metrics") is None:
            self.reason = "t2v_metrics is not installed (pip install t2v-metrics)"
        elif not _hf_cached(repo):
            self.reason = f"{repo} is not in the Hugging Face cache"
        else:
            self.name = f"VQAScore ({model})"

    def score(self, image: Image.Image, prompt: str) -> float:
        import tempfile

        if self._scorer is None:
            os.environ["HF_HUB_OFFLINE"] = "1"  # use the cache, never download
            import t2v_metrics

            self._scorer = t2v_metrics.VQAScore(model=self.model, device=self.device)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "image.png"
            image.save(path)
            return float(self._scorer(images=[str(path)], texts=[prompt])[0][0])


class HpsV3(Metric):
    """HPSv3 (Ma et al. 2025) through the hpsv3 package with a local checkpoint (its Qwen2-VL base cached)."""

    key, label = "hpsv3", "HPSv3"

    def __init__(self, checkpoint: str | None, device: str | None = None) -> None:
        super().__init__()
        self.checkpoint = Path(checkpoint).expanduser() if checkpoint else None
        self.device = device or "cpu"
        self._inferencer: Any = None
        if importlib.util.find_spec("hpsv3") is None:
            self.reason = "the hpsv3 package is not installed"
        elif self.checkpoint is None:
            self.reason = "no --hps-checkpoint given (HPSv3's .safetensors checkpoint)"
        elif not self.checkpoint.is_file():
            self.reason = f"--hps-checkpoint {checkpoint}: no such file"
        else:
            self.name = f"HPSv3 ({self.checkpoint.name})"

    def score(self, image: Image.Image, prompt: str) -> float:
        import tempfile

        if self._inferencer is None:
            os.environ["HF_HUB_OFFLINE"] = "1"
            from hpsv3 import HPSv3RewardInferencer

            self._inferencer = HPSv3RewardInferencer(checkpoint_path=str(self.checkpoint), device=self.device)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "image.png"
            image.save(path)
            rewards = self._inferencer.reward(prompts=[prompt], image_paths=[str(path)])
        value = rewards[0]
        return float(value[0] if getattr(value, "ndim", 0) else value)  # (mu, sigma): the mean


def prompt_metrics(options: EvalOptions) -> list[Metric]:
    """The prompt-alignment and quality columns, in table order (VQAScore, CLIPScore, HPSv3)."""
    return [VqaScore(options.vqa_model, options.device), ClipScore(options.clip_model, options.device),
            HpsV3(options.hps_checkpoint, options.device)]
