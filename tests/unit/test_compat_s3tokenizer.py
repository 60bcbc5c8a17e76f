"""S3Tokenizer's FSQ drop-ins (``ifsq_quant.compat.s3tokenizer``): what theirs lacks.

The bit-for-bit comparisons with s3tokenizer itself are in ``tests/parity/test_families.py``; these
tests need no s3tokenizer: level indices and codes of token ids, usage statistics, the meta device,
``torch.compile``, ONNX export, and the errors.
"""

import importlib.util

import pytest
import torch
from torch import nn

from ifsq_quant.compat.s3tokenizer import CODEBOOK_SIZE, CodebookSizeError, FSQCodebook, FSQVectorQuantization


def inputs(shape, seed=0, scale=1.0):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * scale


def digits_of(module: FSQCodebook, x: torch.Tensor) -> torch.Tensor:
    """The eight rounded levels of each frame, computed from their definition: round(0.999 * tanh(h)) + 1."""
    with torch.no_grad():
        h = module.project_down(x).float()
    return (torch.tanh(h) * torch.tensor(0.999, dtype=torch.float32)).round().long() + 1


@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
def test_token_ids_level_indices_and_codes(index_dtype):
    torch.manual_seed(0)
    q = FSQVectorQuantization(24, 3**8)
    x = inputs((3, 11, 24), scale=3.0)
    ids = q.encode(x)
    assert ids.dtype == torch.int32 and ids.shape == (3, 11) and not ids.requires_grad
    digits = digits_of(q._codebook, x)
    assert torch.equal(ids.long(), (digits * 3 ** torch.arange(8)).sum(-1))  # digit k of dimension k, least significant first
    levels = q.indices_to_level_indices(ids.to(index_dtype))
    assert levels.dtype == torch.int64 and torch.equal(levels, digits)
    codes = q.indices_to_codes(ids.to(index_dtype))
    assert codes.dtype == torch.float32 and torch.equal(codes, (digits - 1).float())
    every = torch.arange(CODEBOOK_SIZE, dtype=index_dtype)
    assert torch.equal((q.indices_to_level_indices(every) * 3 ** torch.arange(8)).sum(-1), every.long())
    with pytest.raises(ValueError, match="out of range"):
        q.indices_to_level_indices(torch.tensor([CODEBOOK_SIZE]))
    with pytest.raises(TypeError, match="integer"):
        q.indices_to_codes(torch.zeros(2))


def test_encode_in_the_projection_dtype_and_gradients_off():
    torch.manual_seed(1)
    q = FSQCodebook(16)
    x = inputs((2, 5, 16), scale=2.0).requires_grad_(True)
    ids = q.encode(x)
    assert not ids.requires_grad and ids.grad_fn is None  # encode runs without gradients, as theirs (inference only)
    half = FSQCodebook(16).to(torch.bfloat16)
    half.load_state_dict(q.to(torch.bfloat16).state_dict())
    assert half.encode(x.detach().to(torch.bfloat16)).dtype == torch.int32
    assert q.state_dict().keys() == {"project_down.weight", "project_down.bias"}
    assert q.level == 3 and q.embed is None
    with pytest.raises(NotImplementedError, match="up project"):
        q.decode(ids)


def test_errors():
    with pytest.raises(CodebookSizeError, match="3\\*\\*8") as error:
        FSQVectorQuantization(16, 3**7)
    assert isinstance(error.value, AssertionError) and isinstance(error.value, ValueError)  # theirs asserts
    with pytest.raises(ValueError, match="level must be 3"):
        FSQCodebook(16, level=2)
    with pytest.raises(ValueError, match="dim"):
        FSQCodebook(0)
    with pytest.raises(ValueError, match=r"\(B, T, dim\)"):
        FSQCodebook(16).encode(torch.randn(5, 16))


def test_track_usage_counts_every_encoded_frame():
    q = FSQVectorQuantization(16, 3**8, track_usage=True)
    x = inputs((2, 7, 16), scale=2.0)
    ids = q.encode(x)
    q.eval().encode(x)
    assert q.usage is q._codebook.usage and q.usage.num_samples == 28
    assert torch.equal(q.usage.code_counts, 2 * torch.bincount(ids.flatten().long(), minlength=CODEBOOK_SIZE))
    with pytest.warns(UserWarning, match="no usage counts"):
        q.load_state_dict(FSQVectorQuantization(16, 3**8).state_dict())  # theirs' keys, strict


def test_meta_device_then_to_empty_and_load():
    torch.manual_seed(2)
    built = FSQVectorQuantization(16, 3**8)
    with torch.device("meta"):
        q = FSQVectorQuantization(16, 3**8)
    q.to_empty(device="cpu")
    q.load_state_dict(built.state_dict())
    x = inputs((2, 5, 16))
    assert torch.equal(q.encode(x), built.encode(x))


class _Encode(nn.Module):
    def __init__(self, module):
        super().__init__()
        self.module = module

    def forward(self, x):
        return self.module.encode(x)


def test_compile_fullgraph_equals_eager():
    torch.manual_seed(3)
    q = FSQVectorQuantization(16, 3**8)
    x = inputs((2, 9, 16), scale=2.0)
    torch._dynamo.reset()
    assert torch.equal(torch.compile(_Encode(q), fullgraph=True, backend="aot_eager")(x), q.encode(x))


def test_onnx_export_of_encode():
    if any(importlib.util.find_spec(name) is None for name in ("onnx", "onnxscript", "onnxruntime")):
        pytest.skip("onnx, onnxscript and onnxruntime are needed (pip install 'ifsq-quant[dev]')")
    import onnxruntime

    torch.manual_seed(4)
    q = FSQVectorQuantization(16, 3**8).eval()
    x = inputs((2, 9, 16), scale=2.0)
    model = torch.onnx.export(_Encode(q).eval(), (x,), dynamo=True, verbose=False).model_proto.SerializeToString()
    session = onnxruntime.InferenceSession(model)
    (ids,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    assert torch.equal(torch.from_numpy(ids), q.encode(x))
