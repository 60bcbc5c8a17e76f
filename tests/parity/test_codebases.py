"""The one-line swap in real code: a published codec built with vector-quantize-pytorch, rebuilt
with ours, must load the same checkpoint strictly and compute the same tokens, outputs, losses
and gradients.

The codebases come with the optional ``codebases`` extra (``pip install -e ".[codebases]"``);
without it these tests skip. They build small configurations and download nothing.

* sq-codec (``sq_codec``, SQCodec: a neural audio codec with one scalar quantizer). Its
  ``build_vq`` creates ``vector_quantize_pytorch.FSQ(levels=...)`` for ``name="fsq"``. (Its
  configurations ship ``name="taae_fsq"``, a subclass overriding ``quantize()`` that calls
  ``bound()`` and rounds again; with vector-quantize-pytorch 1.32, whose ``bound()`` already
  rounds, that gives degenerate codes, so it is no reference to compare against.)
* magvit2-pytorch (``magvit2_pytorch``, VideoTokenizer: MAGVIT-v2's video and image tokenizer)
  builds ``vector_quantize_pytorch.FSQ(levels, dim=..., num_codebooks=...)`` with ``use_fsq=True``.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types

import pytest
import torch

import ifsq_quant

vqp = pytest.importorskip("vector_quantize_pytorch", reason="vector-quantize-pytorch is in the dev extra")


def _state_equal(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sorted(sa) == sorted(sb)
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def _grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def _assert_grads_close(grads_a: dict[str, torch.Tensor], grads_b: dict[str, torch.Tensor]) -> None:
    """Per parameter, relative to the gradient's norm: the straight-through derivative is computed
    in a different order than the anchor's autograd (ulp differences), which sums with
    cancellation can magnify in single elements."""
    assert sorted(grads_a) == sorted(grads_b)
    for name, ga in grads_a.items():
        error = (grads_b[name] - ga).norm()
        assert error <= 1e-4 * ga.norm() + 1e-9, f"{name}: |difference| {error:.3g}, |gradient| {ga.norm():.3g}"


# --- sq-codec ----------------------------------------------------------------------------------

def _sq_codec():
    return pytest.importorskip("sq_codec.en_codec", reason='sq-codec is not installed (pip install -e ".[codebases]")')


def _sq_config(en, vq_config):
    # Every field given: the package's defaults are one-element tuples (trailing commas).
    return en.ModelConfig(
        feature_dim=32, compress_rates=(2, 2), encoder_dims=(8, 16, 32), encoder_depths=(1, 1, 1),
        decode_rates=(2, 2), decoder_dims=(32, 16, 8), decoder_depths=(1, 1, 1), base_unit="normal",
        use_norm=True, use_snake_act=True, decoder_last_layer="legacy", en_coder_depth=1,
        en_coder_window_size=16, en_coder_dynamic_pos=False, en_coder_compress_rate=1, en_coder_cache_size=0,
        vq_config=vq_config,
    )


def _sq_pair(monkeypatch, vq_config, ours_class):
    """(anchor model, our model): the same config built with vqp's FSQ and with ``ours_class``
    patched in where sq_codec looks it up; ours loads the anchor's state_dict strictly."""
    en = _sq_codec()
    import sq_codec.quantize as sq_quantize

    torch.manual_seed(0)
    anchor = en.EnCodec(_sq_config(en, vq_config))
    with monkeypatch.context() as m:
        if vq_config["name"] == "fsq":
            m.setattr(sq_quantize.vector_quantize_pytorch, "FSQ", ours_class)
        else:
            m.setattr(sq_quantize, "TAAE_FSQ", ours_class)
        torch.manual_seed(1)  # a different init: the checkpoint must bring every weight
        ours = en.EnCodec(_sq_config(en, vq_config))
    assert isinstance(ours.quantizer.vq, ifsq_quant.FSQ) and not isinstance(anchor.quantizer.vq, ifsq_quant.FSQ)
    ours.load_state_dict(anchor.state_dict(), strict=True)
    _state_equal(anchor, ours)
    return anchor, ours


def _audio(seed=0):
    g = torch.Generator().manual_seed(seed)
    # two windows of the small config (hop 4 x window 16 = 64 samples); longer clips only cost time
    t = torch.arange(2 * 128, dtype=torch.float32).reshape(2, 128) / 16000
    return 0.5 * torch.sin(2 * torch.pi * 440 * t) + 0.1 * torch.randn(2, 128, generator=g)


def _sq_loss(out, audio):
    return torch.nn.functional.l1_loss(out["generated_audio"], audio) + out["commit_loss"].sum()


def _check_sq(anchor, ours, train: bool):
    audio = _audio()
    anchor.train(train), ours.train(train)
    torch.manual_seed(5)
    out_a = anchor(audio)
    loss_a = _sq_loss(out_a, audio)
    torch.manual_seed(5)
    out_b = ours(audio)
    loss_b = _sq_loss(out_b, audio)
    assert out_b["embedded_indices"].dtype == torch.int64
    assert torch.equal(out_a["embedded_indices"].long(), out_b["embedded_indices"])
    assert torch.equal(out_a["embedded_audio"], out_b["embedded_audio"])
    assert torch.equal(out_a["generated_audio"], out_b["generated_audio"])
    assert torch.equal(loss_a, loss_b)
    loss_a.backward()
    loss_b.backward()
    grads_a, grads_b = _grads(anchor), _grads(ours)
    assert len(grads_a) > 10
    _assert_grads_close(grads_a, grads_b)
    # tokens decode back to the quantized features through the codec's own path
    with torch.no_grad():
        q = ours.quantizer
        assert torch.equal(q.to_features(out_b["embedded_indices"]), q.project_out(q.vq.indices_to_codes(out_b["embedded_indices"])))


@pytest.mark.parametrize("train", [False, True])
@pytest.mark.parametrize("codebook_dim", [3, 4, 5, [8, 8, 8, 5, 5, 5]])
def test_sq_codec_fsq_swap(monkeypatch, train, codebook_dim):
    """build_vq("fsq"): its presets (3, 4, 5 dimensions: [8, 6, 5], [8, 5, 5, 5], [7, 5, 5, 5, 5]) and explicit levels."""
    anchor, ours = _sq_pair(monkeypatch, dict(name="fsq", codebook_dim=codebook_dim), ifsq_quant.FSQ)
    _check_sq(anchor, ours, train)


# --- magvit2-pytorch ---------------------------------------------------------------------------
# VideoTokenizer (MAGVIT-v2, a video/image tokenizer) builds vector_quantize_pytorch.FSQ(levels,
# dim=..., num_codebooks=...) with use_fsq=True. Its model module is loaded without the package's
# __init__, which imports the trainer (accelerate, video I/O); and where torchvision does not
# import (its PyPI wheel is the CUDA build, which does not load with CPU torch), with a stand-in
# that holds the one name the model module needs, VGG16_Weights, for the VGG perceptual loss the
# tests switch off (perceptual_loss_weight=0: VGG is never built).

_MAGVIT2 = "magvit2_pytorch.magvit2_pytorch"


def _magvit2():
    """magvit2-pytorch's model module (see above); skips when it is not installed."""
    if _MAGVIT2 in sys.modules:
        return sys.modules[_MAGVIT2]
    spec = importlib.util.find_spec("magvit2_pytorch")
    if spec is None:
        pytest.skip('magvit2-pytorch is not installed (bash dev.sh setup installs it: pip install --no-deps "magvit2-pytorch==0.5.1" '
                    'next to the codebases extra)')
    stand_ins = {"magvit2_pytorch": types.ModuleType("magvit2_pytorch")}  # the package without its __init__
    stand_ins["magvit2_pytorch"].__path__ = list(spec.submodule_search_locations)
    try:
        import torchvision  # noqa: F401
    except Exception:  # the CUDA build with CPU torch: "operator torchvision::nms does not exist"
        stand_ins["torchvision"] = types.ModuleType("torchvision")
        stand_ins["torchvision.models"] = stand_ins["torchvision"].models = types.ModuleType("torchvision.models")
        stand_ins["torchvision.models"].VGG16_Weights = type("VGG16_Weights", (), {"DEFAULT": None})
    saved = {name: sys.modules.get(name) for name in stand_ins}
    sys.modules.update(stand_ins)
    try:
        return importlib.import_module(_MAGVIT2)
    finally:  # only the stand-ins leave; the model module keeps its references
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


def _magvit2_pair(monkeypatch, num_codebooks):
    """(anchor, ours): a small VideoTokenizer built with vqp's FSQ and with ours patched in;
    ours loads the anchor's state_dict strictly."""
    m2 = _magvit2()

    def build(seed):
        torch.manual_seed(seed)
        return m2.VideoTokenizer(image_size=16, init_dim=8, layers=("residual", "compress_space", "residual", "compress_time"),
                                 use_fsq=True, fsq_levels=[8, 5, 5, 5], num_codebooks=num_codebooks, use_gan=False,
                                 perceptual_loss_weight=0.0, flash_attn=False)

    anchor = build(0)
    with monkeypatch.context() as m:
        m.setattr(m2, "FSQ", ifsq_quant.FSQ)
        ours = build(1)  # a different init: the checkpoint must bring every weight
    assert isinstance(ours.quantizers, ifsq_quant.FSQ) and not isinstance(anchor.quantizers, ifsq_quant.FSQ)
    ours.load_state_dict(anchor.state_dict(), strict=True)
    _state_equal(anchor, ours)
    return anchor, ours


@pytest.mark.parametrize("num_codebooks", [1, 2])
@pytest.mark.parametrize("train", [False, True])
def test_magvit2_video_tokenizer_fsq_swap(monkeypatch, train, num_codebooks):
    """Tokens, reconstruction and loss bit-identical, gradients close; videos and images; tokens
    decode through the tokenizer's own decode_from_code_indices to the same reconstruction."""
    anchor, ours = _magvit2_pair(monkeypatch, num_codebooks)
    g = torch.Generator().manual_seed(0)
    for batch in (torch.randn(2, 3, 5, 16, 16, generator=g), torch.randn(3, 3, 16, 16, generator=g)):  # video, images
        tokens_a, tokens_b = anchor.tokenize(batch), ours.tokenize(batch)
        assert tokens_b.shape == tokens_a.shape and torch.equal(tokens_a.long(), tokens_b.long())
        with torch.no_grad():
            assert torch.equal(anchor.decode_from_code_indices(tokens_a), ours.decode_from_code_indices(tokens_b))
        anchor.train(train), ours.train(train)
        anchor.zero_grad(), ours.zero_grad()
        loss_a, recon_a = anchor(batch, return_recon_loss_only=True)
        loss_b, recon_b = ours(batch, return_recon_loss_only=True)
        assert torch.equal(recon_a, recon_b) and torch.equal(loss_a, loss_b)
        loss_a.backward()
        loss_b.backward()
        grads_a = _grads(anchor)
        assert len(grads_a) > 20
        _assert_grads_close(grads_a, _grads(ours))


# --- residual quantizers as published audio codecs configure them ------------------------------
# No codec that builds vector-quantize-pytorch's ResidualFSQ / GroupedResidualFSQ installs from
# PyPI next to this package's pins (CPU torch, vector-quantize-pytorch 1.32): xcodec2 and neucodec
# pin vector-quantize-pytorch 1.17.8 (xcodec2 also torch 2.5.0), ChatTTS and fish-speech need
# torchaudio (whose PyPI wheel does not load with CPU torch) or pin old versions. Their quantizer
# configurations are rebuilt here around a small encoder/decoder, with the options of the
# drop-in contract (projections with projection_has_bias=False, quantize dropout, soft clamp).

RESIDUAL_CONFIGS = {
    # xcodec2 / neucodec: one stage of [4]*8 levels behind a projection (dim 2048 there)
    "xcodec2": ("ResidualFSQ", dict(dim=64, levels=[4] * 8, num_quantizers=1)),
    # ChatTTS's DVAE (GFSQ): grouped residual FSQ, two groups of two stages of [5, 5, 5, 5]
    "chattts_gfsq": ("GroupedResidualFSQ", dict(dim=64, levels=[5, 5, 5, 5], num_quantizers=2, groups=2)),
    # HiggsAudio's tokenizer: residual FSQ stages behind a projection
    "higgs_rfsq": ("ResidualFSQ", dict(dim=32, levels=[8, 5, 5, 5], num_quantizers=4)),
    "no_bias_dropout": ("ResidualFSQ", dict(dim=32, levels=[8, 5, 5, 5], num_quantizers=4, projection_has_bias=False,
                                            quantize_dropout=True, quantize_dropout_cutoff_index=1)),
    "soft_clamp_grouped_dropout": ("GroupedResidualFSQ", dict(dim=32, groups=2, levels=[7, 5, 5], num_quantizers=3,
                                                              bound_hard_clamp=False, soft_clamp_input_value=1.5,
                                                              quantize_dropout=True)),
}


class _TinyCodec(torch.nn.Module):
    def __init__(self, quantizer, dim):
        super().__init__()
        self.encoder = torch.nn.Sequential(torch.nn.Linear(16, dim), torch.nn.GELU(), torch.nn.Linear(dim, dim))
        self.quantizer = quantizer
        self.decoder = torch.nn.Sequential(torch.nn.Linear(dim, dim), torch.nn.GELU(), torch.nn.Linear(dim, 16))

    def forward(self, x):
        quantized, indices = self.quantizer(self.encoder(x))
        recon = self.decoder(quantized)
        return recon, indices, torch.nn.functional.mse_loss(recon, x)


@pytest.mark.parametrize("train", [False, True])
@pytest.mark.parametrize("name", list(RESIDUAL_CONFIGS))
def test_published_residual_configurations(name, train):
    cls_name, kwargs = RESIDUAL_CONFIGS[name]
    torch.manual_seed(0)
    anchor = _TinyCodec(getattr(vqp, cls_name)(**kwargs), kwargs["dim"])
    torch.manual_seed(1)
    ours = _TinyCodec(getattr(ifsq_quant, cls_name)(**kwargs), kwargs["dim"])
    ours.load_state_dict(anchor.state_dict(), strict=True)
    x = torch.randn(4, 50, 16, generator=torch.Generator().manual_seed(2))
    anchor.train(train), ours.train(train)
    dropped = False
    for step in range(3):  # several draws of quantize dropout
        torch.manual_seed(10 + step)
        recon_a, idx_a, loss_a = anchor(x)
        torch.manual_seed(10 + step)
        recon_b, idx_b, loss_b = ours(x)
        assert torch.equal(idx_a.long(), idx_b) and torch.equal(recon_a, recon_b) and torch.equal(loss_a, loss_b)
        dropped = dropped or bool((idx_b == -1).any())
        anchor.zero_grad(), ours.zero_grad()
        loss_a.backward()
        loss_b.backward()
        _assert_grads_close(_grads(anchor), _grads(ours))
    assert dropped == (train and bool(kwargs.get("quantize_dropout")))  # the dropout path was exercised
