"""The trainer: locking-aware flow matching on a FLUX transformer, full or LoRA, through accelerate.

    layercomposer train --data scenes/ --output runs/demo --model demo-base --vae runs/vae/vae --steps 20000
    accelerate launch -m layercomposer.training.train --data ... --output ...      # many GPUs / nodes

Each step's data, noise and timesteps come from RNGs seeded by (seed, step, micro-step, process), so a
resumed run repeats exactly what an uninterrupted run does; checkpoints hold the model, optimizer and
scheduler (accelerate's `save_state`).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data.scenes import SceneSet
from ..errors import LayerComposerError
from ..flow import sample_logit_normal
from ..models.attention import use_padded_batch_attention, use_stock_attention
from ..models.text import TextEmbeddings
from .batch import Batch, SampleEncoder, collate, flow_loss, guidance_vector
from .config import TrainConfig, add_train_arguments, train_config_from_args
from .metrics import MetricsLog, plot_loss_curve, read_metrics
from .sampling import sample_training_canvas

LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out")
"""The attention projections of FLUX's double and single blocks (LoRA targets, as in the paper)."""


# ----------------------------------------------------------------------------------------------------------
# The run


class Trainer:
    """Holds the models, data and optimizer of one run; `step()` is one optimizer step."""

    def __init__(self, cfg: TrainConfig) -> None:
        from accelerate import Accelerator
        from diffusers import AutoencoderKL

        from ..pipeline import LayerComposerPipeline

        self.cfg = cfg
        self.accelerator = Accelerator(mixed_precision=cfg.mixed_precision, gradient_accumulation_steps=cfg.grad_accum)
        torch.manual_seed(cfg.seed)

        # 1. Models: a registered config starts from random weights (seeded); a directory from its weights.
        from ..models.registry import REGISTRY

        if cfg.model in REGISTRY:
            pipe = LayerComposerPipeline.from_config(REGISTRY[cfg.model], seed=cfg.seed)
        else:
            pipe = LayerComposerPipeline.from_pretrained(cfg.model)
        if cfg.vae:
            pipe.vae = AutoencoderKL.from_pretrained(cfg.vae, use_safetensors=True, torch_dtype=torch.float32)
            pipe.vae.eval().requires_grad_(False)
        self.pipe = pipe
        transformer = pipe.transformer
        use_padded_batch_attention(transformer)
        if cfg.lora_rank > 0:
            from peft import LoraConfig

            transformer.add_adapter(LoraConfig(
                r=cfg.lora_rank, lora_alpha=cfg.lora_alpha or cfg.lora_rank, init_lora_weights="gaussian",
                target_modules=list(LORA_TARGETS),
            ))
        else:
            transformer.requires_grad_(True)
        if cfg.gradient_checkpointing:
            transformer.enable_gradient_checkpointing()
        transformer.train()
        params = [p for p in transformer.parameters() if p.requires_grad]
        text_model = getattr(pipe.text_encoder, "model", None)
        if cfg.train_text_encoder:
            if text_model is None:
                raise LayerComposerError("--train-text-encoder: only the demo's CLIP text encoder can be trained")
            text_model.requires_grad_(True).train()
            params += list(text_model.parameters())
        self.trainable = sum(p.numel() for p in params)

        # 2. Optimizer: AdamW, linear warm-up then constant (the paper's constant learning rate).
        optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / max(1, cfg.warmup)))
        prepared = self.accelerator.prepare(transformer, optimizer, schedule,
                                            *([text_model] if cfg.train_text_encoder else []))
        self.transformer, self.optimizer, self.schedule = prepared[:3]
        self.text_model = prepared[3] if cfg.train_text_encoder else None
        device = self.accelerator.device
        pipe.vae.to(device)
        if not cfg.train_text_encoder:
            pipe.text_encoder.to(device)

        # 3. Data: scenes, sampled per step from seeded RNGs; VAE latents cached by content.
        self.scenes = SceneSet.load(cfg.data, cfg.resolution)
        self.encoder = SampleEncoder(pipe._encode_pixels, mode=cfg.mode)  # type: ignore[arg-type]
        self.eval_batches = self._eval_batches() if cfg.eval_data else []
        self._text_cache: dict[str, TextEmbeddings] = {}
        self.step_index = 0

    # -- data ----------------------------------------------------------------------------------------------

    def make_batch(self, step: int, micro: int) -> Batch:
        """The micro-batch of (step, micro) for this process: same seeds, same batch, on any restart."""
        rank = self.accelerator.process_index
        encoded = []
        for k in range(self.cfg.batch_size):
            rng = np.random.default_rng([self.cfg.seed, step, micro, rank, k])
            scene = self.scenes.scenes[int(rng.integers(len(self.scenes)))]
            sample = sample_training_canvas(scene, rng, self.cfg.sampling)
            if rng.random() < self.cfg.prompt_dropout:
                sample.canvas.prompt = ""
            encoded.append(self.encoder.encode(sample))
        return collate(encoded)

    def _eval_batches(self) -> list[Batch]:
        held_out = SceneSet.load(self.cfg.eval_data, self.cfg.resolution)
        batches, samples = [], []
        for k in range(self.cfg.eval_samples):
            rng = np.random.default_rng([10_000 + self.cfg.seed, k])
            scene = held_out.scenes[k % len(held_out)]
            samples.append(self.encoder.encode(sample_training_canvas(scene, rng, self.cfg.sampling)))
            if len(samples) == self.cfg.batch_size:
                batches.append(collate(samples))
                samples = []
        if samples:
            batches.append(collate(samples))
        return batches

    def text(self, prompts: list[str]) -> TextEmbeddings:
        te = self.pipe.text_encoder
        device = self.accelerator.device
        if self.text_model is not None:
            return te.embed(self.text_model, te.tokenize(prompts).to(device))
        missing = [p for p in dict.fromkeys(prompts) if p not in self._text_cache]
        if missing:
            emb = te.encode(missing)  # any TextEncoder (CLIP, or FLUX's CLIP + T5): frozen, cached by prompt
            for i, p in enumerate(missing):
                self._text_cache[p] = TextEmbeddings(emb.sequence[i:i + 1], emb.pooled[i:i + 1])
        return TextEmbeddings(torch.cat([self._text_cache[p].sequence for p in prompts]),
                              torch.cat([self._text_cache[p].pooled for p in prompts]))

    def noise_and_time(self, batch: Batch, step: int, micro: int) -> tuple[torch.Tensor, torch.Tensor]:
        # step = -1 marks the fixed evaluation noise; SeedSequence needs non-negative entries.
        seq = np.random.SeedSequence([self.cfg.seed, step + 1, micro, self.accelerator.process_index])
        gen = torch.Generator().manual_seed(int(seq.generate_state(1, np.uint64)[0] >> np.uint64(1)))
        t = sample_logit_normal(batch.size, gen)
        noise = torch.randn(batch.x0.shape, generator=gen)
        return noise, t

    # -- steps ---------------------------------------------------------------------------------------------

    def loss_of(self, batch: Batch, step: int, micro: int) -> torch.Tensor:
        device = self.accelerator.device
        noise, t = self.noise_and_time(batch, step, micro)
        batch = batch.to(device)
        with self.accelerator.autocast():
            loss, _ = flow_loss(self.transformer, batch, self.text(batch.prompts), t.to(device), noise.to(device),
                                guidance_vector(self.transformer, batch.size, self.cfg.guidance, device))
        return loss

    def step(self) -> float:
        """One optimizer step (grad_accum micro-batches); returns the mean loss."""
        step, losses = self.step_index, []
        for micro in range(self.cfg.grad_accum):
            batch = self.make_batch(step, micro)
            with self.accelerator.accumulate(self.transformer):
                loss = self.loss_of(batch, step, micro)
                self.accelerator.backward(loss)
                if self.accelerator.sync_gradients and self.cfg.max_grad_norm > 0:
                    self.accelerator.clip_grad_norm_(self.optimizer.param_groups[0]["params"], self.cfg.max_grad_norm)
                self.optimizer.step()
                self.schedule.step()
                self.optimizer.zero_grad(set_to_none=True)
            # The logged loss is the mean over processes, so a multi-GPU log reads like a single-GPU one.
            losses.append(self.accelerator.reduce(loss.detach().float(), reduction="mean").item())
        self.step_index += 1
        return float(np.mean(losses))

    @torch.no_grad()
    def eval_loss(self) -> float:
        """Mean loss on the fixed held-out batches, at fixed noise and times."""
        self.transformer.eval()
        losses = [self.loss_of(batch, -1, i).item() for i, batch in enumerate(self.eval_batches)]
        self.transformer.train()
        return float(np.mean(losses))

    # -- checkpoints ---------------------------------------------------------------------------------------

    @property
    def checkpoint_root(self) -> Path:
        return self.cfg.run / "checkpoints"

    def save_checkpoint(self) -> Path:
        path = self.checkpoint_root / f"step-{self.step_index:07d}"
        self.accelerator.save_state(str(path), safe_serialization=True)
        if self.accelerator.is_main_process:
            (path / "trainer_state.json").write_text(json.dumps({"step": self.step_index}))
            for old in sorted(self.checkpoint_root.glob("step-*"))[: -self.cfg.keep_checkpoints]:
                shutil.rmtree(old, ignore_errors=True)
        return path

    def resume(self) -> int:
        """Load the newest complete checkpoint, if any; returns the step to continue from."""
        done = [p for p in sorted(self.checkpoint_root.glob("step-*")) if (p / "trainer_state.json").is_file()]
        if not done:
            return 0
        self.accelerator.load_state(str(done[-1]))
        self.step_index = json.loads((done[-1] / "trainer_state.json").read_text())["step"]
        return self.step_index

    def export(self) -> Path:
        """The final model: a full pipeline folder, or a LoRA file in diffusers' format."""
        transformer = self.accelerator.unwrap_model(self.transformer)
        if self.cfg.lora_rank > 0:
            from diffusers import FluxKontextPipeline
            from peft.utils import get_peft_model_state_dict

            out = self.cfg.run / "lora"
            FluxKontextPipeline.save_lora_weights(
                out, transformer_lora_layers=get_peft_model_state_dict(transformer), safe_serialization=True
            )
            return out
        from ..pipeline import LayerComposerPipeline

        te = self.pipe.text_encoder
        if self.text_model is not None:
            te.model = self.accelerator.unwrap_model(self.text_model)
        use_stock_attention(transformer)  # inference (batch 1) uses diffusers' stock processor
        pipe = LayerComposerPipeline(transformer, self.pipe.vae, te, self.pipe.schedule, self.pipe.guidance_scale,
                                     self.pipe.default_steps, name=self.pipe.name)
        from diffusers.utils import logging as diffusers_logging

        dtype = getattr(torch, self.cfg.export_dtype)
        level = diffusers_logging.get_verbosity()
        diffusers_logging.set_verbosity_error()  # casting a whole model on purpose: no per-module warning
        try:
            pipe.to("cpu", dtype)
            out = pipe.save_pretrained(self.cfg.run / "model")
            pipe.to(self.accelerator.device, torch.float32)
        finally:
            diffusers_logging.set_verbosity(level)
        use_padded_batch_attention(transformer)
        return out


def train(cfg: TrainConfig, progress: bool = True) -> Trainer:
    """Run (or resume) a training run to `cfg.steps`; writes metrics, loss curve, checkpoints, final model."""
    from tqdm import tqdm

    trainer = Trainer(cfg)
    acc = trainer.accelerator
    start = trainer.resume()
    run = cfg.run
    if acc.is_main_process:
        run.mkdir(parents=True, exist_ok=True)
        (run / "config.json").write_text(json.dumps(asdict(cfg), indent=2, default=str) + "\n")
    log = MetricsLog(run / "metrics.jsonl", resume_step=start) if acc.is_main_process else None
    bar = tqdm(total=cfg.steps, initial=start, desc="training", unit="step", file=sys.stderr,
               disable=not (progress and acc.is_main_process), dynamic_ncols=True)
    t_last, window = time.perf_counter(), []
    while trainer.step_index < cfg.steps:
        loss = trainer.step()
        if not math.isfinite(loss):
            raise LayerComposerError(f"loss became {loss} at step {trainer.step_index}; lower --lr")
        window.append(loss)
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.4f}")
        step = trainer.step_index
        if log is not None and (step % cfg.log_every == 0 or step == cfg.steps):
            now = time.perf_counter()
            record: dict[str, Any] = {"step": step, "loss": float(np.mean(window)),
                                      "lr": trainer.schedule.get_last_lr()[0],
                                      "seconds_per_step": (now - t_last) / len(window)}
            if trainer.eval_batches and (step % cfg.eval_every == 0 or step == cfg.steps):
                record["eval_loss"] = trainer.eval_loss()
            log.write(record)
            t_last, window = now, []
        if step % cfg.save_every == 0 or step == cfg.steps:
            trainer.save_checkpoint()
            if acc.is_main_process:
                plot_loss_curve(read_metrics(run / "metrics.jsonl"), run / "loss.png",
                                title=f"{cfg.mode} training loss ({run.name})")
    bar.close()
    acc.wait_for_everyone()
    if acc.is_main_process:
        trainer.export()
        plot_loss_curve(read_metrics(run / "metrics.jsonl"), run / "loss.png",
                        title=f"{cfg.mode} training loss ({run.name})")
    return trainer


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m layercomposer.training.train` (and `accelerate launch -m ...`)."""
    parser = argparse.ArgumentParser(prog="layercomposer train", description=__doc__.split("\n\n")[0])
    add_train_arguments(parser)
    args = parser.parse_args(argv)
    try:
        train(train_config_from_args(args))
    except LayerComposerError as exc:
        print(f"layercomposer train: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())


def export_checkpoint(run: str | Path, out: str | Path, step: int | None = None, dtype: str = "float16",
                      name: str | None = None, guidance_scale: float | None = None) -> Path:
    """Turn one checkpoint of a full-training run into a pipeline folder (what `--model DIR` loads).

    Any checkpoint, not only the last: pick the step whose samples or eval loss are best. The folder is
    written beside `out` and renamed into place, so an interrupted export leaves nothing half-written.
    """
    from diffusers import AutoencoderKL
    from safetensors.torch import load_file

    from ..models.registry import REGISTRY
    from ..pipeline import LayerComposerPipeline

    run, out = Path(run), Path(out)
    cfg_path = run / "config.json"
    if not cfg_path.is_file():
        raise LayerComposerError(f"{run}: not a training run (config.json missing)")
    cfg = json.loads(cfg_path.read_text())
    if cfg.get("lora_rank", 0) > 0:
        raise LayerComposerError(f"{run}: a LoRA run; its LoRA file is exported to {run / 'lora'} at the end")
    done = {json.loads((p / "trainer_state.json").read_text())["step"]: p
            for p in sorted((run / "checkpoints").glob("step-*")) if (p / "trainer_state.json").is_file()}
    if not done:
        raise LayerComposerError(f"{run}: no complete checkpoint in {run / 'checkpoints'}")
    if step is None:
        step = max(done)
    if step not in done:
        raise LayerComposerError(f"{run}: no checkpoint at step {step} (have {', '.join(map(str, sorted(done)))})")
    if dtype not in ("float32", "float16", "bfloat16"):
        raise LayerComposerError(f"dtype: float32, float16 or bfloat16, got {dtype!r}")
    if out.exists():
        raise LayerComposerError(f"{out}: already exists; choose a new folder")
    ckpt = done[step]

    model = cfg["model"]
    pipe = (LayerComposerPipeline.from_config(REGISTRY[model]) if model in REGISTRY
            else LayerComposerPipeline.from_pretrained(model))
    if cfg.get("vae"):
        pipe.vae = AutoencoderKL.from_pretrained(cfg["vae"], use_safetensors=True, torch_dtype=torch.float32).eval()
    pipe.transformer.load_state_dict(load_file(ckpt / "model.safetensors"))
    if cfg.get("train_text_encoder"):
        pipe.text_encoder.model.load_state_dict(load_file(ckpt / "model_1.safetensors"))
    pipe.name = name or out.name
    if guidance_scale is not None:
        pipe.guidance_scale = float(guidance_scale)  # the default `generate` uses
    from diffusers.utils import logging as diffusers_logging

    level = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()  # casting a whole model on purpose: no per-module warning
    try:
        pipe.to("cpu", getattr(torch, dtype))
    finally:
        diffusers_logging.set_verbosity(level)
    tmp = out.with_name(f".{out.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        pipe.save_pretrained(tmp)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
