"""GPU fast paths, each against the plain path (skipped without a CUDA device; run by benchmarks/gpu_suite.py).

- fused q/k/v projection (``vidpar.kernels.set_fused_qkv``) == separate projections, both families;
- inductor-compiled blocks (RMSNorm, RoPE, AdaLN modulation fused by the compiler) == eager, and the elementwise
  chain around attention compiles to fewer kernels than eager launches (counts printed);
- every installed attention backend through its custom op under ``torch.compile`` == the eager call;
- bf16 end to end: a bf16 checkpoint load keeps fp32 where the reference does, and the bf16 forward (eager and
  compiled) is within 2e-2 of the float64 model.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
from safetensors.torch import save_file
from torch.utils._python_dispatch import TorchDispatchMode

from vidpar.compile import CompileOptions, compile_regions
from vidpar.kernels import attention_plain, attention_with_lse, available_backends, backend_specs, set_fused_qkv
from vidpar.models.wan import WanTransformer3D, WanTransformerConfig
from vidpar.models.wan.rope import apply_rotary
from vidpar.models.wan.transformer_loader import native_state_dict_to_official
from vidpar.models.wan.transformer_layers import WanLayerNorm, WanRMSNorm

pytestmark = pytest.mark.gpu

TOL = {torch.float32: 1e-5, torch.bfloat16: 2e-2}
DEVICE = "cuda"


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


def wan_config() -> WanTransformerConfig:
    return WanTransformerConfig(dim=512, num_heads=4, num_layers=2, ffn_dim=1024, text_dim=256, freq_dim=256)


def wan_fp32(seed: int = 0) -> WanTransformer3D:
    torch.manual_seed(seed)
    model = WanTransformer3D(wan_config()).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return model


def wan_inputs(dtype: torch.dtype, frames: int = 3):
    g = torch.Generator().manual_seed(1)
    latents = torch.randn(1, 16, frames, 24, 40, generator=g)  # 3 x 12 x 20 = 720 tokens
    text = torch.randn(1, 64, 256, generator=g)
    return latents.to(DEVICE, dtype), torch.tensor([700.0], device=DEVICE), text.to(DEVICE, dtype)


def hy15_model(dtype: torch.dtype):
    from vidpar.models.hunyuanvideo15 import HunyuanVideo15Transformer3D, HunyuanVideo15TransformerConfig

    cfg = HunyuanVideo15TransformerConfig(num_layers=2, hidden_size=512, num_heads=4, rope_axes_dim=(32, 48, 48),
                                          mlp_ratio=2.0, in_channels=9, out_channels=4, text_dim=64, glyph_dim=32,
                                          image_dim=32, task="i2v")
    torch.manual_seed(0)
    return HunyuanVideo15Transformer3D(cfg).eval().to(DEVICE, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("family", ["wan", "hy15"])
@torch.no_grad()
def test_fused_qkv_equals_separate_projections(family, dtype):
    if family == "wan":
        model, args, kwargs = wan_fp32().to(DEVICE, dtype), wan_inputs(dtype), {}
    else:
        from hy15_reference import make_inputs

        model = hy15_model(dtype)
        args, kwargs = (), {k: (v.to(DEVICE, dtype) if v is not None and v.is_floating_point() else
                                (v.to(DEVICE) if v is not None else None))
                            for k, v in make_inputs(model.config, grid=(3, 8, 10)).items()}
    plain = model(*args, **kwargs)
    assert set_fused_qkv(model, True) == 2
    fused = model(*args, **kwargs)
    assert rel(fused, plain) <= TOL[dtype]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@torch.no_grad()
def test_inductor_blocks_equal_eager(dtype):
    model = wan_fp32().to(DEVICE, dtype)
    args = wan_inputs(dtype)
    eager = model(*args)
    torch._dynamo.reset()
    compile_regions(model.blocks, CompileOptions())
    assert rel(model(*args), eager) <= TOL[dtype]


@torch.no_grad()
def test_elementwise_chain_fuses():
    """LayerNorm -> modulation -> q projection's RMSNorm -> RoPE, as in a Wan block: a few kernels, not one per op."""
    from torch._inductor import metrics

    dim, heads = 512, 4
    ln, rms = WanLayerNorm(dim, elementwise_affine=False).to(DEVICE), WanRMSNorm(dim).to(DEVICE)
    g = torch.Generator(device=DEVICE).manual_seed(0)
    x = torch.randn(1, 720, dim, device=DEVICE, generator=g)
    shift, scale = (torch.randn(1, 1, dim, device=DEVICE, generator=g) for _ in range(2))
    cos, sin = (torch.randn(1, 720, 1, dim // heads // 2, device=DEVICE, generator=g) for _ in range(2))

    def chain(x, shift, scale, cos, sin):
        h = ln(x) * (1 + scale) + shift
        return apply_rotary(rms(h).unflatten(-1, (heads, -1)), cos, sin)

    with _AtenOpCounter() as eager_ops:
        ref = chain(x, shift, scale, cos, sin)
    torch._dynamo.reset()
    metrics.reset()
    compiled = torch.compile(chain, fullgraph=True)(x, shift, scale, cos, sin)
    assert rel(compiled, ref) <= 1e-5
    # Eager runs one kernel per aten op; the compiled chain fewer (the count is recorded by the GPU suite's log).
    print(f"elementwise chain: {eager_ops.count} aten ops eager, {metrics.generated_kernel_count} generated kernels")
    assert metrics.generated_kernel_count < eager_ops.count, (metrics.generated_kernel_count, eager_ops.count)


class _AtenOpCounter(TorchDispatchMode):
    """Counts the aten ops a region dispatches (each is at least one kernel launch in eager mode)."""

    def __enter__(self):
        self.count = 0
        return super().__enter__()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("name", [n for n, s in backend_specs().items() if "cuda" in s.devices])
@torch.no_grad()
def test_backend_custom_op_compiles_to_the_same_kernel(name, dtype=torch.bfloat16):
    spec = backend_specs()[name]
    if name not in available_backends("cuda") or dtype not in spec.dtypes:
        pytest.skip(f"{name} not installed or no {dtype}")
    g = torch.Generator(device=DEVICE).manual_seed(0)
    q, k, v = (torch.randn(1, n, 8, 128, device=DEVICE, dtype=dtype, generator=g) for n in (300, 500, 500))
    torch._dynamo.reset()
    plain = torch.compile(lambda q, k, v: attention_plain(q, k, v, name), fullgraph=True)(q, k, v)
    assert rel(plain, attention_plain(q, k, v, name)) <= 1e-3  # the same kernel: equal up to its own noise
    if spec.has_lse:
        out, lse = torch.compile(lambda q, k, v: attention_with_lse(q, k, v, name), fullgraph=True)(q, k, v)
        ref_out, ref_lse = attention_with_lse(q, k, v, name)
        assert rel(out, ref_out) <= 1e-3 and (lse - ref_lse).abs().max().item() <= 1e-3


def _save_official(model: WanTransformer3D, folder) -> None:
    c = model.config
    save_file({k: v.contiguous() for k, v in native_state_dict_to_official(model).items()},
              str(folder / "diffusion_pytorch_model.safetensors"))
    (folder / "config.json").write_text(json.dumps({
        "dim": c.dim, "num_heads": c.num_heads, "num_layers": c.num_layers, "ffn_dim": c.ffn_dim,
        "in_dim": c.in_channels, "out_dim": c.out_channels, "text_dim": c.text_dim, "freq_dim": c.freq_dim,
        "eps": c.eps, "model_type": "t2v"}))


@torch.no_grad()
def test_bf16_end_to_end_keeps_fp32_where_the_reference_does(tmp_path):
    ref_model = wan_fp32()
    _save_official(ref_model, tmp_path)
    model = WanTransformer3D.from_pretrained(tmp_path, dtype=torch.bfloat16, device=DEVICE)
    dtypes = {n: p.dtype for n, p in model.named_parameters()}
    assert dtypes["blocks.0.self_attn.q.weight"] == torch.bfloat16 and dtypes["blocks.0.ffn.0.weight"] == torch.bfloat16
    for fp32 in ("blocks.0.modulation", "blocks.0.norm3.weight", "head.modulation",
                 "time_embedder.time_embedding.0.weight"):
        assert dtypes[fp32] == torch.float32, fp32
    ref = copy.deepcopy(ref_model).to(DEVICE, torch.float64)(*(a.double() for a in wan_inputs(torch.float32)))
    args = wan_inputs(torch.bfloat16)
    assert rel(model(*args), ref) <= 2e-2
    torch._dynamo.reset()
    compile_regions(model.blocks, CompileOptions())
    assert rel(model(*args), ref) <= 2e-2
