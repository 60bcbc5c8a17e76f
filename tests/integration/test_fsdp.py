"""FSDP2 (``fully_shard``) on two gloo ranks: every module, fp32 parameters and a bf16 MixedPrecisionPolicy.

Each case is an autoencoder ``Linear -> quantizer -> Linear`` with ``fully_shard`` on the quantizer and on
the model, fed the same batch on both ranks, against the unsharded model (cast to bf16 for the bf16 policy):
the same indices, outputs and gradients, decoding on the sharded quantizer, no view outputs (FSDP's
warning), usage all-reduced, a state dict saved and loaded with ``torch.distributed.checkpoint``, and
the error (or the parent's ``unshard()``) for a quantizer whose parameters only a sharded parent holds.
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch

from ifsq_quant import FSQ, GroupedResidualFSQ, ResidualFSQ, iFSQ
from tests.distributed import Autoencoder, gloo_group, spawn

pytestmark = pytest.mark.slow

QUANTIZERS = {
    "FSQ": lambda: FSQ([8, 5, 5, 5], dim=16),
    "iFSQ index_groups": lambda: iFSQ([7, 7, 7, 7], dim=16, index_groups=[2, 2]),
    "ResidualFSQ": lambda: ResidualFSQ(levels=[8, 5, 5, 5], num_quantizers=3, dim=16),
    "GroupedResidualFSQ": lambda: GroupedResidualFSQ(dim=16, groups=2, levels=[8, 5, 5, 5], num_quantizers=2),
}


def _decode(quantizer, indices):
    return quantizer.indices_to_codes(indices) if isinstance(quantizer, FSQ) else quantizer.get_output_from_indices(indices)


def _full(t):
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def _case(name: str, bf16: bool) -> dict:
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    torch.manual_seed(0)
    model = Autoencoder(QUANTIZERS[name]())
    reference = copy.deepcopy(model)
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16) if bf16 else MixedPrecisionPolicy()
    fully_shard(model.quantizer, mp_policy=policy)
    fully_shard(model, mp_policy=policy)
    if bf16:
        reference = reference.bfloat16()
    x = torch.randn(4, 30, 12)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out, quantized, indices = model(x)
        (out.float().square().mean() + quantized.float().square().mean()).backward()
    ref_out, ref_quantized, ref_indices = reference(x.bfloat16() if bf16 else x)
    (ref_out.float().square().mean() + ref_quantized.float().square().mean()).backward()
    grads = {n: (_full(p.grad).float(), r.grad.float()) for (n, p), r in zip(model.named_parameters(), reference.parameters())}
    tolerance = dict(rtol=2e-2, atol=2e-3) if bf16 else dict(rtol=1e-5, atol=1e-6)
    decoded = _decode(model.quantizer, indices)
    return {
        "indices": torch.equal(indices, ref_indices),
        "outputs": torch.equal(out, ref_out) and torch.equal(quantized, ref_quantized),
        "output dtype": out.dtype == ref_out.dtype,
        "gradients": all(torch.allclose(g, r, **tolerance) for g, r in grads.values()),
        "decode": torch.equal(decoded, _decode(reference.quantizer, ref_indices)),
        "decode on the sharded module equals the forward": torch.equal(decoded, quantized),
        # (the test's own Linear decoder returns a view of its matmul: only the quantizer's outputs are the package's)
        "no view warning": not any("view tensor" in str(w.message) and "Autoencoder" not in str(w.message) for w in caught),
        "outputs are not views": quantized._base is None and indices._base is None,
    }


def _matrix_worker(rank, world_size, port, results):
    with gloo_group(rank, world_size, port):
        for name in QUANTIZERS:
            for bf16 in (False, True):
                try:
                    results[(rank, name, bf16)] = _case(name, bf16)
                except Exception as error:  # reported by the parent with the case
                    results[(rank, name, bf16)] = {"ran": f"{type(error).__name__}: {error}"}


def test_every_module_under_fully_shard():
    results = spawn(_matrix_worker, timeout=600)
    failures = [f"rank {rank}, {name}, {'bf16' if bf16 else 'fp32'}: {check} = {value}"
                for (rank, name, bf16), checks in sorted(results.items(), key=str) for check, value in checks.items() if value is not True]
    assert len(results) == 2 * len(QUANTIZERS) * 2 and not failures, "\n".join(failures)


def _usage_and_checkpoint_worker(rank, world_size, port, results, folder):
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, set_model_state_dict
    from torch.distributed.fsdp import fully_shard

    with gloo_group(rank, world_size, port):
        torch.manual_seed(0)
        model = Autoencoder(ResidualFSQ(levels=[8, 5, 5, 5], num_quantizers=2, dim=16, track_usage=True))
        fully_shard(model.quantizer)
        fully_shard(model)
        model.train()
        torch.manual_seed(rank)
        model(torch.randn(2 + rank, 10, 12))  # rank r quantizes (2 + r) * 10 vectors in each stage
        usages = [layer.usage for layer in model.quantizer.layers]
        before = [u.num_samples for u in usages]
        for usage in usages:
            usage.all_reduce()
        x = torch.randn(3, 10, 12, generator=torch.Generator().manual_seed(7))
        model.eval()
        expected = model(x)
        dcp.save(get_model_state_dict(model), checkpoint_id=folder)

        torch.manual_seed(123)  # other weights, then the checkpoint
        other = Autoencoder(ResidualFSQ(levels=[8, 5, 5, 5], num_quantizers=2, dim=16, track_usage=True))
        fully_shard(other.quantizer)
        fully_shard(other)
        other.eval()
        changed = not torch.equal(other(x)[0], expected[0])
        state = get_model_state_dict(other)
        dcp.load(state, checkpoint_id=folder)
        set_model_state_dict(other, state)
        loaded = other(x)
        # a quantizer whose parameters only its sharded parent holds: a clear error, or the parent's unshard()
        torch.manual_seed(0)
        parent = Autoencoder(FSQ([8, 5, 5, 5], dim=16))
        _, _, indices = parent(torch.randn(2, 5, 12))
        fully_shard(parent)  # sharded now, and no forward has gathered the parameters since
        try:
            parent.quantizer.indices_to_codes(indices)
            refused = ""
        except RuntimeError as error:
            refused = str(error)
        parent.unshard()
        decoded = parent.quantizer.indices_to_codes(indices)
        parent.reshard()
        results[rank] = {"parent-sharded decode refused": refused, "decoded after unshard": tuple(decoded.shape),
                         "usage before": before, "usage after": [u.num_samples for u in usages],
                         "weights differed before loading": changed,
                         "loaded outputs": all(torch.equal(a, b) for a, b in zip(loaded, expected)),
                         "loaded usage": [layer.usage.num_samples for layer in other.quantizer.layers]}


def test_usage_all_reduce_and_distributed_checkpoint(tmp_path):
    results = spawn(_usage_and_checkpoint_worker, str(tmp_path / "checkpoint"), timeout=300)
    for rank in range(2):
        assert results[rank]["usage before"] == [20 + 10 * rank] * 2
        assert results[rank]["usage after"] == [50, 50]
        assert results[rank]["weights differed before loading"] and results[rank]["loaded outputs"]
        assert "fully_shard(model.quantizer)" in results[rank]["parent-sharded decode refused"]
        assert results[rank]["decoded after unshard"] == (2, 5, 16)
