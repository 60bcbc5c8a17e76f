"""The end-to-end demo's presets: every number that changes its result (written to ``metrics.json``).

- ``smoke``: a few dozen steps and 100 samples, under a minute; its numbers only check that the
  pipeline runs end to end (``SMOKE_NOTE``), they measure nothing;
- ``quick``: the demo (about 8 minutes on one thread of a 2-core CPU);
- ``full``: longer training, bigger models, and FSQ/iFSQ tokenizers on 32x32 natural patches too.
"""

from __future__ import annotations

import copy

# the configuration keys of the training loop (``examples.training.train``); the rest configure a model or its sampling
TRAINING_KEYS = ("steps", "batch_size", "lr", "weight_decay")

SMOKE_NOTE = "smoke preset: tiny training and 100 samples, so these numbers only check the plumbing; they measure nothing"

_BASE = dict(
    seed=0,
    levels=[17, 17, 17, 17],  # ~4 bits per latent dimension, as in the paper
    index_groups=[2, 2],  # AR vocabularies: 17*17 = 289 per group
    n_val_per_class=30,
    classifier=dict(steps=300, batch_size=64, lr=2e-3, width=32, feature_dim=64),
    tokenizer=dict(steps=600, batch_size=64, lr=2e-3, channels=[16, 32, 64], blocks=1, l1_weight=0.0, l2_weight=1.0),
    ar=dict(steps=1200, batch_size=64, lr=1e-3, dim=128, depth=4, heads=4, class_dropout=0.1, dropout=0.1,
            cfg_scale=2.0, temperature=1.0, top_k=None, cfg_sweep=[1.0, 1.5, 3.0]),
    diffusion=dict(steps=1500, batch_size=64, lr=1e-3, dim=128, depth=4, heads=4, patch_size=1, class_dropout=0.1,
                   cfg_scale=1.25, sample_steps=16, sampler="heun", cfg_sweep=[1.0, 2.0]),
    num_samples=300,  # generated images per generator (= validation size: FD bias depends on n)
    patches=None,  # natural-patch tokenizers (full only)
)


def make_preset(**changes) -> dict:
    """The quick preset with ``changes``: a dict value updates that section, anything else replaces the key."""
    cfg = copy.deepcopy(_BASE)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key].update(value)
        else:
            cfg[key] = value
    return cfg


PRESETS: dict[str, dict] = {
    "smoke": make_preset(
        classifier=dict(steps=60),
        tokenizer=dict(steps=60),
        ar=dict(steps=40, dim=64, depth=2, cfg_sweep=[]),
        diffusion=dict(steps=40, dim=64, depth=2, sample_steps=6, cfg_sweep=[]),
        num_samples=100,
    ),
    "quick": make_preset(),
    "full": make_preset(  # about 2.5 h on one thread of the 2-core CPU; pass --threads 0 on a dedicated machine
        classifier=dict(steps=1000),
        tokenizer=dict(steps=3000, channels=[32, 64, 128]),
        ar=dict(steps=5000, dim=192, depth=6, heads=6, cfg_sweep=[1.0, 1.5, 2.5, 3.0, 4.0]),
        diffusion=dict(steps=6000, dim=192, depth=6, heads=6, sample_steps=32, cfg_sweep=[1.0, 1.5, 2.0, 3.0]),
        patches=dict(steps=2000, batch_size=64, lr=2e-3, channels=[32, 64, 64], blocks=1, l1_weight=0.0, l2_weight=1.0),
    ),
}
