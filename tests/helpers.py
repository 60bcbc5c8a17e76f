"""Inputs and runners shared by the test tiers."""

import importlib.util

import pytest
import torch


def residual_inputs(shape, seed=0):
    """Gaussian features at several magnitudes plus exact zeros and grid points (bin edges)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g) * torch.tensor([0.3, 1.0, 3.0])[torch.randint(0, 3, shape, generator=g)]
    flat = x.view(-1)
    flat[: flat.numel() // 10] = 0.0
    flat[flat.numel() // 10: flat.numel() // 5] = torch.linspace(-1.5, 1.5, flat.numel() // 5 - flat.numel() // 10)
    return x


def onnx_run(module, args):
    """``module`` exported with the dynamo ONNX exporter and run by onnxruntime on ``args`` (CPU tensors): its outputs."""
    if any(importlib.util.find_spec(name) is None for name in ("onnx", "onnxscript", "onnxruntime")):
        pytest.skip("onnx, onnxscript and onnxruntime are needed (pip install 'ifsq-quant[dev]')")
    import onnxruntime

    model = torch.onnx.export(module.eval(), args, dynamo=True, verbose=False).model_proto.SerializeToString()
    session = onnxruntime.InferenceSession(model)
    return [torch.from_numpy(out) for out in session.run(None, {i.name: a.numpy() for i, a in zip(session.get_inputs(), args)})]
