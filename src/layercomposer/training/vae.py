"""The VAE stage of the demo model: train a small diffusers `AutoencoderKL` on the scenes' pictures and layers.

    layercomposer train-vae --data scenes/ --output runs/vae --steps 4000

It sees both what the transformer will generate (pictures) and what it will be conditioned on (layers,
composited on the conditioning fill colour exactly as `conditioning.composite_on_fill` does). After
training, `shift_factor` and `scaling_factor` are set from the latent statistics so the diffusion model
sees roughly unit-variance latents (the FLUX VAE's convention).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..conditioning import composite_on_fill
from ..data.scenes import SceneSet
from ..errors import LayerComposerError
from .config import VaeTrainConfig, add_vae_arguments, vae_config_from_args
from .metrics import MetricsLog, plot_loss_curve, read_metrics


def _image_pool(scenes: SceneSet) -> tuple[list, list]:
    pictures, layers = [], []
    for scene in scenes.scenes:
        for im in scene.images:
            pictures.append(im)
            layers.extend((im, name) for name in im.layers)
    return pictures, layers


def load_pixels(item, as_layer: bool) -> np.ndarray:
    """(3, H, W) float32 in [-1, 1]: a picture, or a layer composited on the fill colour."""
    if as_layer:
        image, name = item
        return composite_on_fill(image.layer(name))
    return np.asarray(item.picture(), np.float32).transpose(2, 0, 1) / 127.5 - 1.0


def make_batch(pictures: list, layers: list, cfg: VaeTrainConfig, step: int) -> torch.Tensor:
    rng = np.random.default_rng([cfg.seed, step])
    crops = []
    for _ in range(cfg.batch_size):
        as_layer = rng.random() < cfg.layer_share
        pool = layers if as_layer else pictures
        px = load_pixels(pool[int(rng.integers(len(pool)))], as_layer)
        _, h, w = px.shape
        if as_layer and (px != 0).any():
            # Characters are small: centre the crop near the layer's content, or it is mostly fill colour.
            ys, xs = np.nonzero((px != 0).any(axis=0))
            cy = (ys.min() + ys.max()) // 2 + int(rng.integers(-cfg.crop // 4, cfg.crop // 4 + 1))
            cx = (xs.min() + xs.max()) // 2 + int(rng.integers(-cfg.crop // 4, cfg.crop // 4 + 1))
            y = int(np.clip(cy - cfg.crop // 2, 0, h - cfg.crop)) // 8 * 8
            x = int(np.clip(cx - cfg.crop // 2, 0, w - cfg.crop)) // 8 * 8
        else:
            y = int(rng.integers(0, h - cfg.crop + 1)) // 8 * 8
            x = int(rng.integers(0, w - cfg.crop + 1)) // 8 * 8
        crop = px[:, y:y + cfg.crop, x:x + cfg.crop]
        if rng.random() < 0.5:
            crop = crop[:, :, ::-1]
        crops.append(np.ascontiguousarray(crop))
    return torch.from_numpy(np.stack(crops))


def edge_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """L1 between image gradients: keeps the sprites' hard outlines sharp (no perceptual net offline)."""
    def grads(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x[..., 1:, :] - x[..., :-1, :], x[..., :, 1:] - x[..., :, :-1]

    (py, px), (ty, tx) = grads(pred), grads(target)
    return F.l1_loss(py, ty) + F.l1_loss(px, tx)


def psnr(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    """PSNR in dB of images in [-1, 1] (peak-to-peak 2), optionally inside a (H, W) mask."""
    err = (a.float() - b.float()) ** 2
    if mask is not None:
        m = mask.to(err.dtype).expand_as(err)
        mse = (err * m).sum() / m.sum().clamp(min=1)
    else:
        mse = err.mean()
    return float(10 * torch.log10(4.0 / mse.clamp(min=1e-10)))


def train_vae(cfg: VaeTrainConfig, progress: bool = True) -> Path:
    """Train the VAE, set its latent normalisation, save it to OUTPUT/vae with metrics and a loss curve."""
    from diffusers import AutoencoderKL
    from tqdm import tqdm

    from ..models.registry import REGISTRY

    if cfg.model not in REGISTRY:
        raise LayerComposerError(f"--model: unknown config {cfg.model!r} ({', '.join(REGISTRY)})")
    if cfg.decoder_only and not cfg.init:
        raise LayerComposerError("--decoder-only needs --init (the encoder whose latents to keep)")
    if cfg.anchor_weight and not (cfg.init and math.isfinite(cfg.anchor_weight) and cfg.anchor_weight > 0
                                  and not cfg.decoder_only):
        raise LayerComposerError("--anchor-weight needs --init, no --decoder-only, and a positive finite weight")
    run = Path(cfg.output)
    run.mkdir(parents=True, exist_ok=True)
    (run / "config.json").write_text(json.dumps(asdict(cfg), indent=2) + "\n")
    torch.manual_seed(cfg.seed)
    if cfg.init:
        vae = AutoencoderKL.from_pretrained(cfg.init, use_safetensors=True, torch_dtype=torch.float32).train()
    else:
        vae = AutoencoderKL(**REGISTRY[cfg.model].vae).train()
    if cfg.decoder_only:
        vae.encoder.requires_grad_(False).eval()
        if vae.quant_conv is not None:
            vae.quant_conv.requires_grad_(False)
    anchor = None
    if cfg.anchor_weight:
        # The --init encoder, frozen: the latents the transformers were trained on.
        anchor = AutoencoderKL.from_pretrained(cfg.init, use_safetensors=True, torch_dtype=torch.float32).eval()
        anchor.decoder = None
        anchor.requires_grad_(False)
    keep_normalisation = cfg.decoder_only or anchor is not None
    pictures, layers = _image_pool(SceneSet.load(cfg.data))
    optimizer = torch.optim.AdamW([p for p in vae.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=0.0)
    # Cosine decay to 5% over the run: a short CPU run needs the late small steps for sharp edges.
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, s / cfg.steps)))
    )
    log = MetricsLog(run / "metrics.jsonl")
    window: list[float] = []
    t_last = time.perf_counter()
    for step in tqdm(range(1, cfg.steps + 1), desc="vae", unit="step", file=sys.stderr, disable=not progress):
        x = make_batch(pictures, layers, cfg, step)
        with torch.set_grad_enabled(not cfg.decoder_only):
            posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample() if cfg.sample_posterior else posterior.mode()).sample
        kl = posterior.kl().mean() / (x.shape[-1] * x.shape[-2])
        # MSE is what PSNR measures; the gradient term keeps outlines sharp; the KL only bounds the scale.
        loss = F.mse_loss(recon, x) + cfg.edge_weight * edge_loss(recon, x) + cfg.kl_weight * kl
        drift = None
        if anchor is not None:
            with torch.no_grad():
                reference = anchor.encode(x).latent_dist.mode()
            drift = F.mse_loss(posterior.mode(), reference) * anchor.config.scaling_factor ** 2
            loss = loss + cfg.anchor_weight * drift
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        window.append(loss.item())
        if step % cfg.log_every == 0 or step == cfg.steps:
            now = time.perf_counter()
            row = {"step": step, "loss": float(np.mean(window)), "psnr_batch": psnr(recon.detach(), x),
                   "seconds_per_step": (now - t_last) / len(window)}
            if drift is not None:
                row["latent_drift_mse"] = drift.item()  # the logged step's, not a window mean
            log.write(row)
            window, t_last = [], now
        if step % cfg.save_every == 0 and step < cfg.steps:
            save_vae(vae, pictures, cfg, run / "vae", keep_normalisation=keep_normalisation)
            vae.train()
            if cfg.decoder_only:
                vae.encoder.eval()
    out = save_vae(vae, pictures, cfg, run / "vae", keep_normalisation=keep_normalisation)
    if cfg.eval_data:
        held_pictures, _ = _image_pool(SceneSet.load(cfg.eval_data))
        report = {"heldout_psnr": evaluate_vae(vae, held_pictures[:64])}
        (run / "eval.json").write_text(json.dumps(report, indent=2) + "\n")
    plot_loss_curve(read_metrics(run / "metrics.jsonl"), run / "loss.png", title=f"vae loss ({run.name})")
    return out


def save_vae(vae, pictures: list, cfg: VaeTrainConfig, out: Path, keep_normalisation: bool) -> Path:
    """Save (atomically enough: a complete folder replaces the old one) with the latent normalisation set."""
    import shutil
    import tempfile

    vae.eval()
    if not keep_normalisation:  # decoder-only and anchored runs keep the latent space they were given
        set_latent_normalisation(vae, pictures, cfg.seed)
    tmp = Path(tempfile.mkdtemp(prefix=".vae-", dir=out.parent))
    vae.save_pretrained(tmp, safe_serialization=True)
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return out


@torch.no_grad()
def set_latent_normalisation(vae, pictures: list, seed: int, count: int = 64) -> None:
    """shift_factor = latent mean, scaling_factor = 1 / latent std over `count` pictures (FLUX convention)."""
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(pictures), size=min(count, len(pictures)), replace=False)
    lat = torch.cat([vae.encode(torch.from_numpy(load_pixels(pictures[i], False))[None]).latent_dist.mode()
                     for i in picks])
    vae.register_to_config(shift_factor=float(lat.mean()), scaling_factor=float(1.0 / lat.std()))


@torch.no_grad()
def evaluate_vae(vae, pictures: list) -> float:
    """Mean reconstruction PSNR (dB) over full pictures."""
    scores = []
    for item in pictures:
        x = torch.from_numpy(load_pixels(item, False))[None]
        scores.append(psnr(vae.decode(vae.encode(x).latent_dist.mode()).sample.clamp(-1, 1), x))
    return float(np.mean(scores))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="layercomposer train-vae", description=__doc__.split("\n\n")[0])
    add_vae_arguments(parser)
    try:
        train_vae(vae_config_from_args(parser.parse_args(argv)))
    except LayerComposerError as exc:
        print(f"layercomposer train-vae: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
