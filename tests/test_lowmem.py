"""Low-memory loading on a tiny random FLUX.1 Kontext folder: torchao int8 (CPU, bf16), a GGUF file written here,
diffusers' group offloading, the attention-backend flag; the CUDA-only back-ends (nf4, fp8) run where CUDA is."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from conftest import cli, console, pixels
from layercomposer.errors import ModelError
from tiny_models import save_tiny_kontext, write_gguf

CUDA = torch.cuda.is_available()


@pytest.fixture(scope="module")
def kontext_dir(tmp_path_factory):
    return save_tiny_kontext(tmp_path_factory.mktemp("models") / "FLUX.1-Kontext-tiny")


@pytest.fixture(scope="module")
def gguf_file(kontext_dir, tmp_path_factory):
    path = tmp_path_factory.mktemp("gguf") / "flux1-kontext-tiny-Q8_0.gguf"
    quantized, total = write_gguf(load_file(kontext_dir / "transformer" / "diffusion_pytorch_model.safetensors"), path)
    assert 20 < quantized < total  # the big matrices are Q8_0 blocks, norms and biases float32
    return path


@pytest.fixture(scope="module")
def canvas_file(tmp_path_factory):
    root = tmp_path_factory.mktemp("canvas")
    Image.new("RGBA", (32, 32), (200, 30, 30, 255)).save(root / "a.png")
    Image.new("RGBA", (16, 32), (30, 30, 200, 255)).save(root / "b.png")
    doc = {"version": 1, "width": 64, "height": 64, "prompt": "two sprites",
           "layers": [{"name": "a", "image": "a.png", "x": 16, "y": 16, "locked": True},
                      {"name": "b", "image": "b.png", "x": 40, "y": 8}]}
    (root / "c.json").write_text(json.dumps(doc))
    return root / "c.json"


def transformer_output(transformer):
    """One call of a FLUX transformer on fixed random inputs, in float32."""
    gen = torch.Generator().manual_seed(0)
    dtype = next(p for p in transformer.parameters() if p.is_floating_point()).dtype
    inputs = {"hidden_states": torch.randn(1, 20, 16, generator=gen), "encoder_hidden_states": torch.randn(1, 6, 32,
              generator=gen), "pooled_projections": torch.randn(1, 32, generator=gen)}
    with torch.no_grad():
        out = transformer(**{k: v.to(dtype) for k, v in inputs.items()}, timestep=torch.tensor([0.6]),
                          img_ids=torch.zeros(20, 3), txt_ids=torch.zeros(6, 3), guidance=torch.tensor([2.5]),
                          return_dict=False)[0]
    return out.float()


def relative_error(a, b):
    return float((a - b).norm() / b.norm())


@pytest.fixture(scope="module")
def plain(kontext_dir, canvas_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("plain") / "plain.png"
    r = cli("generate", str(canvas_file), "--model", str(kontext_dir), "--steps", "2", "-o", str(out))
    assert r.returncode == 0, r.stderr
    return out


def test_int8_quantized_transformer_on_the_cpu(kontext_dir, canvas_file, plain, tmp_path):
    from torchao.quantization import Int8Tensor

    from layercomposer.models.lowmem import LoadOptions
    from layercomposer.pipeline import LayerComposerPipeline

    pipe = LayerComposerPipeline.from_pretrained(kontext_dir, load=LoadOptions(quantize="int8"))
    weight = pipe.transformer.transformer_blocks[0].attn.to_q.weight
    assert isinstance(weight, Int8Tensor) and weight.dtype == torch.bfloat16  # torchao's int8 weight-only tensor
    assert pipe.transformer.is_quantized and pipe.dtype == torch.bfloat16
    assert next(pipe.vae.parameters()).dtype == torch.float32  # only the transformer is quantized
    reference = LayerComposerPipeline.from_pretrained(kontext_dir).transformer
    err = relative_error(transformer_output(pipe.transformer), transformer_output(reference))
    assert 0 < err < 0.1, err  # int8 weights and bf16 compute: close to float32 (5% here), not equal
    pipe.to("cpu", torch.float32)  # a quantized transformer keeps its dtype through .to()
    assert isinstance(pipe.transformer.transformer_blocks[0].attn.to_q.weight, Int8Tensor)

    out = tmp_path / "int8.png"
    r = cli("generate", str(canvas_file), "--model", str(kontext_dir), "--steps", "2", "--quantize", "int8",
            "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert Image.open(out).size == (64, 64)
    assert np.abs(pixels(out) - pixels(plain)).mean() < 8  # the same picture, up to quantization


def test_gguf_transformer_written_here_loads(kontext_dir, gguf_file, canvas_file, plain, tmp_path):
    from diffusers.quantizers.gguf.utils import GGUFParameter

    from layercomposer.models.lowmem import LoadOptions
    from layercomposer.pipeline import LayerComposerPipeline

    pipe = LayerComposerPipeline.from_pretrained(kontext_dir, load=LoadOptions(gguf=str(gguf_file)))
    weight = pipe.transformer.transformer_blocks[0].attn.to_q.weight
    assert isinstance(weight, GGUFParameter) and weight.quant_type.name == "Q8_0"
    reference = LayerComposerPipeline.from_pretrained(kontext_dir).transformer
    err = relative_error(transformer_output(pipe.transformer), transformer_output(reference))
    assert 0 < err < 0.02, err  # Q8_0 blocks dequantized on the fly

    out = tmp_path / "gguf.png"
    r = cli("generate", str(canvas_file), "--model", str(kontext_dir), "--steps", "2", "--gguf", str(gguf_file),
            "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert np.abs(pixels(out) - pixels(plain)).mean() < 8
    with pytest.raises(ModelError, match="not found"):
        LoadOptions(gguf=str(tmp_path / "missing.gguf"))
    with pytest.raises(ModelError, match="choose one"):
        LoadOptions(quantize="int8", gguf=str(gguf_file))


def test_group_offload_gives_the_same_picture(kontext_dir, canvas_file, plain, tmp_path):
    from layercomposer.canvas import load_canvas
    from layercomposer.pipeline import LayerComposerPipeline

    out = tmp_path / "group.png"
    r = cli("generate", str(canvas_file), "--model", str(kontext_dir), "--steps", "2", "--offload", "group",
            "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert np.array_equal(pixels(out), pixels(plain))  # on a CPU the blocks move CPU -> CPU: same numbers

    pipe = LayerComposerPipeline.from_pretrained(kontext_dir).enable_group_offload("cpu")
    hooked = [m for m in pipe.transformer.modules() if getattr(m, "_diffusers_hook", None) is not None]
    names = {name for m in hooked for name in m._diffusers_hook.hooks}
    assert any("group_offloading" in name for name in names), names
    assert pipe.device == torch.device("cpu")
    image = pipe(load_canvas(canvas_file), num_inference_steps=2)
    assert np.array_equal(np.asarray(image, int), pixels(plain))


def test_attention_backend_flag(kontext_dir, canvas_file, plain, tmp_path):
    from diffusers.models.attention_dispatch import _AttentionBackendRegistry

    out = tmp_path / "math.png"
    active = _AttentionBackendRegistry.get_active_backend()[0]
    try:
        r = cli("generate", str(canvas_file), "--model", str(kontext_dir), "--steps", "2", "--attention-backend",
                "_native_math", "-o", str(out))
    finally:
        _AttentionBackendRegistry.set_active_backend(active)  # diffusers sets it process-wide
    assert r.returncode == 0, r.stderr
    assert np.abs(pixels(out) - pixels(plain)).max() <= 1
    bad = cli("generate", str(canvas_file), "--model", str(kontext_dir), "--attention-backend", "nonsense",
              "-o", str(tmp_path / "x.png"))
    assert bad.returncode == 2 and "--attention-backend nonsense" in bad.stderr and "\n" not in bad.stderr.strip()


@pytest.mark.skipif(CUDA, reason="checks the CPU refusal; CUDA machines run the back-ends themselves below")
def test_cuda_only_quantization_is_a_one_line_error_on_a_cpu(kontext_dir, canvas_file, tmp_path):
    r = console("generate", str(canvas_file), "--model", str(kontext_dir), "--quantize", "nf4",
                "-o", str(tmp_path / "x.png"))  # a fresh process: nothing else on stderr (torchao's import noise)
    assert r.returncode == 2 and "--quantize nf4 needs a CUDA GPU" in r.stderr and "\n" not in r.stderr.strip()
    from layercomposer.models.lowmem import quantization_config

    with pytest.raises(ModelError, match="fp8 needs a CUDA GPU"):
        quantization_config("fp8")


@pytest.mark.skipif(not CUDA, reason="nf4 (bitsandbytes 4-bit) and fp8 (torchao float8) need CUDA: no CPU kernels")
@pytest.mark.parametrize("kind", ["nf4", "fp8"])
def test_cuda_quantization(kind, kontext_dir, canvas_file, tmp_path):
    if kind == "fp8" and torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("fp8 needs compute capability 8.9+")
    out = tmp_path / f"{kind}.png"
    r = cli("generate", str(canvas_file), "--model", str(kontext_dir), "--steps", "2", "--quantize", kind,
            "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert Image.open(out).size == (64, 64)


def test_refine_with_int8_and_group_offload(kontext_dir, canvas_file, tmp_path):
    from torchao.quantization import Int8Tensor

    from layercomposer.models.lowmem import LoadOptions
    from layercomposer.refine import RefineEngine

    out = tmp_path / "refined.png"
    r = cli("refine", str(canvas_file), "--model", str(kontext_dir), "--steps", "2", "--quantize", "int8",
            "--offload", "group", "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert Image.open(out).size == (64, 64)
    engine = RefineEngine(str(kontext_dir), "kontext", "cpu", load=LoadOptions(quantize="int8"), offload="group")
    assert isinstance(engine.pipe.transformer.transformer_blocks[0].attn.to_q.weight, Int8Tensor)
    assert engine.pipe._maybe_raise_error_if_group_offload_active(raise_error=False)  # diffusers' own check


def test_serve_loads_its_model_with_the_flags(kontext_dir, gguf_file, tmp_path, monkeypatch):
    """`serve --gguf ... --offload group`: the editor's model loader applies them (no server started here)."""
    from diffusers.quantizers.gguf.utils import GGUFParameter

    import layercomposer.server.app as app
    from layercomposer import cli as cli_module

    seen = {}
    monkeypatch.setattr(app, "create_app", lambda settings, load_pipeline=None: seen.update(loader=load_pipeline))
    monkeypatch.setattr("uvicorn.Server", lambda config: type("S", (), {"run": lambda self: None})())
    monkeypatch.setattr(app, "uvicorn_config", lambda *a: None)
    args = cli_module.build_parser().parse_args(["serve", "--model", str(kontext_dir), "--gguf", str(gguf_file),
                                                 "--offload", "group", "--outputs", str(tmp_path / "o")])
    assert cli_module.cmd_serve(args) == 0
    pipe = seen["loader"]()
    assert isinstance(pipe.transformer.transformer_blocks[0].attn.to_q.weight, GGUFParameter)
    assert any(getattr(m, "_diffusers_hook", None) is not None for m in pipe.transformer.modules())
    plain = cli_module.build_parser().parse_args(["serve", "--model", str(kontext_dir), "--outputs", str(tmp_path)])
    assert cli_module.cmd_serve(plain) == 0 and seen["loader"] is None  # no flags: the server's own loader


def test_train_a_lora_on_an_int8_base(kontext_dir, tmp_path, fresh_accelerate):
    """A quantized frozen base with a bf16 LoRA (the known trainers' memory path): it trains, checkpoints, resumes,
    and its LoRA file is diffusers' (it loads into the float32 base through --lora)."""
    from torchao.quantization import Int8Tensor

    from layercomposer.errors import LayerComposerError
    from layercomposer.models.attention import PaddedBatchAttnProcessor
    from layercomposer.pipeline import LayerComposerPipeline
    from layercomposer.training.config import TrainConfig, add_train_arguments, train_config_from_args
    from layercomposer.training.train import train
    from layercomposer.world import generate_dataset

    scenes = tmp_path / "scenes"
    generate_dataset(scenes, 3, seed=2, size=128)
    import argparse

    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    argv = ["--data", str(scenes), "--output", str(tmp_path / "run"), "--model", str(kontext_dir), "--quantize",
            "int8", "--lora-rank", "4", "--steps", "2", "--batch-size", "2", "--resolution", "64", "--lr", "2e-2",
            "--warmup", "0", "--save-every", "2", "--attention-backend", "_native_math"]
    cfg = train_config_from_args(parser.parse_args(argv))
    assert cfg.mixed_precision == "bf16"  # implied by --quantize
    from diffusers.models.attention_dispatch import _AttentionBackendRegistry

    active = _AttentionBackendRegistry.get_active_backend()[0]
    try:
        trainer = train(cfg, progress=False)
    finally:
        _AttentionBackendRegistry.set_active_backend(active)  # diffusers sets it process-wide
    assert {p._attention_backend.value for p in trainer.pipe.transformer.attn_processors.values()} == {"_native_math"}
    to_q = trainer.pipe.transformer.transformer_blocks[0].attn.to_q
    assert isinstance(to_q.base_layer.weight, Int8Tensor)  # peft's LoRA around torchao's int8 linear
    lora = [p for n, p in trainer.pipe.transformer.named_parameters() if p.requires_grad]
    assert lora and all(p.dtype == torch.bfloat16 for p in lora)
    resumed = train(TrainConfig(**{**cfg.__dict__, "steps": 3, "attention_backend": None}),
                    progress=False)  # from the step-2 checkpoint
    assert resumed.step_index == 3
    assert json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])["step"] == 3
    pipe = LayerComposerPipeline.from_pretrained(kontext_dir)
    assert pipe.load_loras([str(tmp_path / "run" / "lora" / "pytorch_lora_weights.safetensors")]) == ["lora0"]
    with pytest.raises(LayerComposerError, match="train a LoRA"):
        train_config_from_args(parser.parse_args([a for a in argv if a not in ("--lora-rank", "4")]))
    assert isinstance(trainer.pipe.transformer.attn_processors["transformer_blocks.0.attn.processor"],
                      PaddedBatchAttnProcessor)
