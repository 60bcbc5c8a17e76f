"""What the protocol studies share: their configuration and their training recipes.

- ``TOK``, ``AR``, ``DIT``: the tokenizer, AR transformer and DiT of every protocol study (16x16 font
  digits, latents 4x4x4); ``HEADLINE``: the headline test's configuration per mode
  (``studies/generation.py``), which the bits sweep and the convergence study change in a few places;
- ``swept_tokenizer``: a tokenizer trained at each learning rate of a sweep, the best by validation PSNR kept;
- ``early_stopped_ar``: an AR transformer with its validation loss logged, the best checkpoint kept;
- ``seed_records``: for one seed, every bottleneck's tokenizer and, on its tokens, the generators,
  each measured by the protocol (one record per generator).
"""

from __future__ import annotations

import copy
import time

import numpy as np
import torch

from examples import pipeline as P
from studies.harness import ENV
from studies.protocol import ProtocolEvaluator

KINDS = ("fsq", "ifsq", "erf_equal")  # FSQ (tanh), iFSQ (2*sigmoid(1.6 z) - 1), erf with equal-width bins
TOK = dict(steps=600, batch_size=64, lr=2e-3, channels=[16, 32, 64], blocks=1, l1_weight=0.0, l2_weight=1.0)
AR = dict(steps=1200, batch_size=64, lr=1e-3, dim=128, depth=4, heads=4, class_dropout=0.1, dropout=0.1, temperature=1.0, top_k=None,
          repa_layer=2, repa_weight=0.5)
DIT = dict(steps=1500, batch_size=64, lr=1e-3, dim=128, depth=4, heads=4, patch_size=1, class_dropout=0.1, sample_steps=16, sampler="heun",
           cfg_scale=1.0)
SPLITS = dict(train=20_000, val=2_000, test=5_000, features=10_000, reference=5_000)
FEATURES = dict(steps=1500, batch_size=64, lr=2e-3, width=32, feature_dim=64)  # the evaluation network, on the ``features`` split

HEADLINE = {
    "quick": dict(seeds=1, levels=[17] * 4, index_groups=[2, 2], splits=dict(SPLITS), features=dict(FEATURES, steps=400),
                  repa_encoder=dict(steps=300, batch_size=64, lr=2e-3, width=16, feature_dim=32),
                  tokenizer=dict(TOK, steps=300), tokenizer_lrs=[2e-3], tokenizer_sweep_seeds=1,
                  ar=dict(AR, steps=1000, dim=64, depth=2, repa_layer=1), ar_eval_every=100,
                  dit=dict(DIT, steps=2000, dim=64, depth=2, sample_steps=8),
                  ar_guidance=[1.0, 2.0, 3.0], dit_guidance=[1.0, 2.0], num_val_samples=500,
                  num_generated=2000, num_real=5000, n_boot=100, repa=False, repa_kinds=list(KINDS)),
    "full": dict(seeds=3, levels=[17] * 4, index_groups=[2, 2], splits=dict(SPLITS), features=dict(FEATURES),
                 repa_encoder=dict(steps=1000, batch_size=64, lr=2e-3, width=16, feature_dim=32),
                 tokenizer=dict(TOK, steps=1000), tokenizer_lrs=[1e-3, 2e-3, 4e-3], tokenizer_sweep_seeds=1,
                 ar=dict(AR), ar_eval_every=100, dit=dict(DIT, steps=1200, sample_steps=8),
                 ar_guidance=[1.0, 1.5, 2.0, 3.0, 4.0], dit_guidance=[1.0, 1.5, 2.0, 3.0], num_val_samples=500,
                 num_generated=2000, num_real=5000, n_boot=200, repa=True, repa_kinds=["ifsq"]),
}


def swept_tokenizer(kind: str, cfg: dict, data: dict, seed: int, lrs: list[float], eval_every: int = 0) -> tuple:
    """The tokenizer of ``kind`` at every learning rate in ``lrs``; keeps the best by validation PSNR -> (tok, metrics).

    metrics: the chosen ``lr``, ``lr_sweep`` (per learning rate: validation PSNR, final loss, and with
    ``eval_every > 0`` the validation PSNR every that many steps, ``val_curve``), and the test ``psnr``,
    ``ssim``, ``utilization``, ``codebook_usage``. ``loss_drop_last_tenth``: how much the mean training loss
    of the last tenth of the steps is below that of the tenth before it (relative), a check of how far
    from converged it stopped.
    """
    best = None
    sweep = {}
    for lr in lrs:
        curve: list[dict] = []

        def on_eval(step: int, tok, curve=curve) -> None:
            curve.append(dict(step=step, val_psnr=P.evaluate_tokenizer(tok, data["val"], ENV)[0]["psnr"]))

        tok, losses = P.train_tokenizer(kind, cfg["levels"], cfg["index_groups"], dict(cfg["tokenizer"], lr=lr), data["train"], ENV, seed,
                                        f"tokenizer {kind} lr={lr:g} seed={seed}", callback=on_eval if eval_every else None,
                                        callback_every=eval_every)
        m, _, _ = P.evaluate_tokenizer(tok, data["val"], ENV)
        tenth = max(1, len(losses) // 10)
        drop = 1.0 - float(np.mean(losses[-tenth:])) / float(np.mean(losses[-2 * tenth:-tenth]))
        sweep[str(lr)] = dict(val_psnr=m["psnr"], final_loss=float(np.mean(losses[-50:])), loss_drop_last_tenth=drop,
                              **(dict(val_curve=curve) if eval_every else {}))
        if best is None or m["psnr"] > best[1]["psnr"]:
            best = (tok, m, lr)
    tok, _, lr = best
    m, _, _ = P.evaluate_tokenizer(tok, data["test"], ENV)
    return tok, dict(lr=lr, lr_sweep=sweep, psnr=m["psnr"], ssim=m["ssim"], utilization=m["utilization"], codebook_usage=m["codebook_usage"],
                     loss_drop_last_tenth=sweep[str(lr)]["loss_drop_last_tenth"])


def early_stopped_ar(tok, cfg: dict, data: dict, seed: int, repa_encoder=None) -> tuple:
    """The AR transformer with its validation loss logged every ``ar_eval_every`` steps -> (the best-validation weights, info:
    ``best_step``, ``val_loss``, ``val_curve``, ``train_loss``). With ``repa_encoder``: trained with REPA on its features."""
    val_tokens = P.encode_tokens(tok, data["val"].images)
    log: list[dict] = []
    best: dict = {}

    def on_eval(step: int, model) -> None:
        with torch.no_grad():
            loss = float(model.loss(data["val"].labels, val_tokens))
        log.append(dict(step=step, val_loss=loss))
        if not best or loss < best["val_loss"]:
            best.update(step=step, val_loss=loss, state=copy.deepcopy(model.state_dict()))

    name = "ar_repa" if repa_encoder is not None else "ar"
    ar, losses = P.train_ar(tok, data["train"], cfg["ar"], ENV, seed, f"{name} seed={seed}", callback=on_eval,
                            callback_every=cfg["ar_eval_every"], repa_encoder=repa_encoder)
    ar.load_state_dict(best["state"])
    return ar.eval(), dict(best_step=best["step"], val_loss=best["val_loss"], val_curve=log, train_loss=float(np.mean(losses[-50:])))


def seed_records(seed: int, cfg: dict, data: dict, evaluator: ProtocolEvaluator, repa_encoder, kinds: list[str], generators: list[str],
                 tokenizer_lrs: dict[str, list[float]]) -> tuple:
    """Every tokenizer of ``kinds`` for ``seed`` (at the learning rates ``tokenizer_lrs[kind]``) and its ``generators``
    (``ar``, ``ar_repa``, ``dit``), each with guidance chosen on validation and measured on the test split
    -> (records, tokenizers, the learning rate chosen for each kind)."""
    records, tokenizers, chosen_lrs = [], {}, {}

    def measure(sample, scales):
        return evaluator.measure(sample, scales, cfg["num_val_samples"], cfg["num_generated"], seed)

    for kind in kinds:
        t0 = time.perf_counter()
        tok, tm = swept_tokenizer(kind, cfg, data, seed, tokenizer_lrs[kind], eval_every=cfg.get("tokenizer_eval_every", 0))
        tokenizers[kind], chosen_lrs[kind] = tok, tm["lr"]
        base = dict(tokenizer=kind, seed=seed, tokenizer_psnr=tm["psnr"], tokenizer_lr=tm["lr"], tokenizer_utilization=tm["utilization"],
                    tokenizer_lr_sweep=tm["lr_sweep"], tokenizer_loss_drop_last_tenth=tm["loss_drop_last_tenth"],
                    tokenizer_steps=cfg["tokenizer"]["steps"])
        print(f"seed {seed} {kind}: test PSNR {tm['psnr']:.2f} dB (lr {tm['lr']:g}), {time.perf_counter() - t0:.0f} s", flush=True)
        for gen in [g for g in generators if g in ("ar", "ar_repa")]:
            if gen == "ar_repa" and (repa_encoder is None or kind not in cfg["repa_kinds"]):
                continue
            t0 = time.perf_counter()
            ar, info = early_stopped_ar(tok, cfg, data, seed, repa_encoder if gen == "ar_repa" else None)

            def sample_ar(labels, scale, s, ar=ar, tok=tok):
                return P.sample_ar(ar, tok, labels, scale, s, ENV, temperature=cfg["ar"]["temperature"], top_k=cfg["ar"]["top_k"])

            m = measure(sample_ar, cfg["ar_guidance"])
            records.append(dict(base, generator=gen, **m, **info, seconds=round(time.perf_counter() - t0, 1)))
            print(f"  {gen}: FD {m['fd']:.2f} {m['fd_ci']}, KID {m['kid']:.4f}, accuracy {m['accuracy']:.3f}, guidance {m['guidance']}, "
                  f"best step {info['best_step']}", flush=True)
        if "dit" in generators:
            t0 = time.perf_counter()
            dit, normalizer, losses = P.train_dit(tok, data["train"], cfg["dit"], ENV, seed, f"dit {kind} seed={seed}")
            with torch.no_grad():
                val_loss = float(dit.loss(normalizer.normalize(P.encode_codes(tok, data["val"].images)), data["val"].labels,
                                          generator=torch.Generator().manual_seed(seed + 4)))

            def sample_dit(labels, scale, s, dit=dit, normalizer=normalizer, tok=tok):
                return P.decode_codes(tok, P.sample_dit(dit, normalizer, labels, cfg["dit"], s, ENV, cfg_scale=scale))

            m = measure(sample_dit, cfg["dit_guidance"])
            records.append(dict(base, generator="dit", **m, val_loss=val_loss, train_loss=float(np.mean(losses[-50:])),
                                seconds=round(time.perf_counter() - t0, 1)))
            print(f"  dit: FD {m['fd']:.2f} {m['fd_ci']}, KID {m['kid']:.4f}, accuracy {m['accuracy']:.3f}, guidance {m['guidance']}", flush=True)
    return records, tokenizers, chosen_lrs
