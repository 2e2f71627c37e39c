"""Image metrics for the evaluation: masked PSNR, SSIM, and where a character ended up (template match)."""

from __future__ import annotations

import math

import numpy as np
from PIL import Image


def to_float(image: Image.Image) -> np.ndarray:
    """RGB image -> (H, W, 3) float64 in [0, 1]."""
    return np.asarray(image.convert("RGB"), np.float64) / 255.0


def psnr(a: Image.Image, b: Image.Image, mask: np.ndarray | None = None) -> float:
    """PSNR in dB between two RGB images (peak 1), over the pixels where `mask` (H, W) is true.

    NaN when the mask is empty; capped at 100 dB for identical pixels.
    """
    x, y = to_float(a), to_float(b)
    err = (x - y) ** 2
    if mask is not None:
        if not mask.any():
            return math.nan
        err = err[mask]
    mse = float(err.mean())
    return 100.0 if mse <= 1e-10 else 10 * math.log10(1.0 / mse)


def _gaussian(size: int = 11, sigma: float = 1.5) -> np.ndarray:
    ax = np.arange(size) - size // 2
    g = np.exp(-(ax**2) / (2 * sigma**2))
    return g / g.sum()


def _blur(x: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Separable 'valid' convolution of (H, W) with a 1-D kernel along both axes."""
    from numpy.lib.stride_tricks import sliding_window_view

    k = len(kernel)
    x = (sliding_window_view(x, k, axis=0) * kernel).sum(-1)
    return (sliding_window_view(x, k, axis=1) * kernel).sum(-1)


def ssim(a: Image.Image, b: Image.Image) -> float:
    """Mean SSIM (Wang et al. 2004: 11x11 Gaussian window, sigma 1.5, K1 0.01, K2 0.03) over RGB channels."""
    x, y = to_float(a), to_float(b)
    k = _gaussian()
    c1, c2 = 0.01**2, 0.03**2
    scores = []
    for ch in range(3):
        p, q = x[..., ch], y[..., ch]
        mu_p, mu_q = _blur(p, k), _blur(q, k)
        var_p = _blur(p * p, k) - mu_p**2
        var_q = _blur(q * q, k) - mu_q**2
        cov = _blur(p * q, k) - mu_p * mu_q
        s = ((2 * mu_p * mu_q + c1) * (2 * cov + c2)) / ((mu_p**2 + mu_q**2 + c1) * (var_p + var_q + c2))
        scores.append(s.mean())
    return float(np.mean(scores))


def locate(image: Image.Image, template: Image.Image, mask: np.ndarray, box: tuple[int, int, int, int],
           search: int = 24, stride: int = 2) -> tuple[int, int]:
    """Offset (dx, dy) within +-`search` px at which `template`'s masked pixels best match `image`.

    `template` and `mask` are the full frame; `box` is the masked region's bounding box. The match score is
    the mean squared difference over the mask (lower is better). Used to measure where a character was
    drawn relative to where the canvas put it.
    """
    x0, y0, x1, y1 = box
    img = to_float(image)
    tpl = to_float(template)[y0:y1, x0:x1]
    m = mask[y0:y1, x0:x1]
    h, w = img.shape[:2]
    best, best_off = math.inf, (0, 0)
    for dy in range(-search, search + 1, stride):
        for dx in range(-search, search + 1, stride):
            ya, yb, xa, xb = y0 + dy, y1 + dy, x0 + dx, x1 + dx
            if ya < 0 or xa < 0 or yb > h or xb > w:
                continue
            diff = ((img[ya:yb, xa:xb] - tpl) ** 2).sum(-1)[m]
            score = diff.mean() if diff.size else math.inf
            if score < best:
                best, best_off = score, (dx, dy)
    return best_off
