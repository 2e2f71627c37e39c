"""Automated benchmark canvases (the paper's appendix): identities placed on a prior image's faces.

Given a prior image (given by the user: a text-to-image prior is not run here) and identity photos, each
identity is cut out (person segmentation) and placed so that its face lands on a face of the prior: faces
are paired left to right; one person is landmark-aligned (eye centre, eye distance and eye angle), several
are scaled by face width and centred on the face. The canvas is written with `canvas.py`; its flattened
collage is what the collage baselines get.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image

from ..canvas import Canvas, Layer, LayerImage
from . import PhotoError
from .cutout import Face, cutout, detect_faces, load_photo, rgb_array


def place_on_face(
    size: tuple[int, int], anchor: tuple[float, float], target: tuple[float, float], scale: float, rotation: float
) -> tuple[float, float]:
    """Layer (x, y) so that the image point `anchor` (pixels of an image of `size`) lands on the canvas point
    `target` with `scale` and `rotation` (degrees, counter-clockwise on screen about the image centre)."""
    w, h = size
    dx, dy = (anchor[0] - w / 2) * scale, (anchor[1] - h / 2) * scale
    t = math.radians(rotation)
    rx, ry = dx * math.cos(t) + dy * math.sin(t), -dx * math.sin(t) + dy * math.cos(t)
    cx, cy = target[0] - rx, target[1] - ry
    return cx - w * scale / 2, cy - h * scale / 2


def _eye_pose(face: Face) -> tuple[tuple[float, float], float, float] | None:
    """(eye midpoint, eye distance, eye-line angle in radians, y down) or None."""
    eyes = face.eyes
    if eyes is None:
        return None
    (ax, ay), (bx, by) = eyes
    dist = math.hypot(bx - ax, by - ay)
    if dist < 2:
        return None
    return ((ax + bx) / 2, (ay + by) / 2), dist, math.atan2(by - ay, bx - ax)


def benchmark_canvas(
    prior: Image.Image,
    identities: list[Image.Image],
    prompt: str | None = None,
    names: list[str] | None = None,
    with_prior: bool = False,
) -> Canvas:
    """A canvas of the prior's size with each identity cut out and placed on a face of the prior."""
    if not identities:
        raise PhotoError("at least one identity photo is needed")
    prior_faces = sorted(detect_faces(prior, min_score=0.6), key=lambda f: f.centre[0])
    if len(prior_faces) < len(identities):
        raise PhotoError(f"the prior has {len(prior_faces)} faces for {len(identities)} identities")
    if len(prior_faces) > len(identities):  # the largest faces, still left to right
        prior_faces = sorted(sorted(prior_faces, key=lambda f: -f.width)[: len(identities)], key=lambda f: f.centre[0])
    names = names or [f"identity{i}" for i in range(len(identities))]
    canvas = Canvas(prior.width, prior.height, prompt=prompt, meta={"prior_faces": [f.to_dict() for f in prior_faces]})
    if with_prior:
        canvas.layers.append(
            Layer(
                name="prior",
                image=LayerImage.from_pil(prior.convert("RGBA"), "prior.png"),
                kind="background",
                locked=False,
            )
        )
    for name, photo, target in zip(names, identities, prior_faces, strict=True):
        arr = rgb_array(photo)
        cut = cutout(arr, method="person")
        own = [
            f
            for f in detect_faces(arr, min_score=0.6)
            if cut.box[0] <= f.centre[0] <= cut.box[2] and cut.box[1] <= f.centre[1] <= cut.box[3]
        ]
        if not own:
            raise PhotoError(f"{name}: no face found on the cut-out person")
        face = max(own, key=lambda f: f.width)
        ox, oy = cut.box[:2]
        src, dst = _eye_pose(face), _eye_pose(target)
        # Eyes only for frontal faces (a profile's eye distance would blow the scale up) and small tilts.
        frontal = bool(src and dst and src[1] >= 0.3 * face.width and dst[1] >= 0.3 * target.width)
        if len(identities) == 1 and src and dst and frontal and abs(math.degrees(src[2] - dst[2])) <= 30:
            anchor = (src[0][0] - ox, src[0][1] - oy)
            scale, rotation = dst[1] / src[1], math.degrees(src[2] - dst[2])
            point, how = dst[0], "eyes"
        else:
            anchor = (face.centre[0] - ox, face.centre[1] - oy)
            scale, rotation = target.width / face.width, 0.0
            point, how = target.centre, "face box"
        x, y = place_on_face(cut.layer.size, anchor, point, scale, rotation)
        canvas.layers.append(
            Layer(
                name=name,
                image=LayerImage.from_pil(cut.layer, f"{name}.png"),
                x=round(x, 2),
                y=round(y, 2),
                scale=round(scale, 5),
                rotation=round(rotation, 3),
                meta={"aligned_by": how, "prior_face": list(target.box)},
            )
        )
    return canvas.validate()


def load_images(paths: list[str | Path]) -> list[Image.Image]:
    return [load_photo(p) for p in paths]


def face_alignment_error(rendered: Image.Image, target: Face) -> float:
    """Distance (px) between the eye midpoint of the face found in `rendered` nearest `target` and target's."""
    faces = detect_faces(np.asarray(rendered.convert("RGB")), min_score=0.5)
    if not faces:
        return math.inf
    pose = _eye_pose(target)
    best = min(faces, key=lambda f: math.dist(f.centre, target.centre))
    mine = _eye_pose(best)
    if pose is None or mine is None:
        return math.dist(best.centre, target.centre)
    return math.dist(mine[0], pose[0])
