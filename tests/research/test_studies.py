"""The studies (``studies/``) run in their smallest configuration and write their outputs; the committed results are
what their JSON says and name the commands that reproduce them."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from studies import utilization

ROOT = Path(__file__).resolve().parents[2]


def test_utilization_study_smallest_configuration(tmp_path):
    utilization.main(["--samples", "20000", "--out", str(tmp_path)])
    rows = json.loads((tmp_path / "utilization.json").read_text())["rows"]
    assert len(rows) == 3 * 5 * 2 * 3
    assert (tmp_path / "utilization.png").stat().st_size > 1000
    by_key = {(r["sigma"], r["L"], r["bins"], r["activation"]): r for r in rows}
    # erf maps N(0, 1) onto U(-1, 1): equal bins use (nearly) every bit; the round layout cannot.
    assert by_key[(1.0, 17, "equal", "erf")]["bits"] > by_key[(1.0, 17, "round", "erf")]["bits"]
    assert abs(by_key[(1.0, 17, "equal", "erf")]["bits"] - by_key[(1.0, 17, "equal", "erf")]["max_bits"]) < 0.01
    assert all(0 <= r["bits"] <= r["max_bits"] + 1e-9 and 0 <= r["ks"] <= 1 for r in rows)
    # the harness: the command recorded (less --out), the table rewritten from the JSON alone, the default folder not the committed one
    meta = json.loads((tmp_path / "utilization.json").read_text())["meta"]
    assert meta["command"] == "python -m studies.utilization --samples 20000" and meta["samples"] == 20000
    md = (tmp_path / "utilization.md").read_text()
    (tmp_path / "utilization.md").unlink()
    utilization.main(["--from-json", str(tmp_path)])
    assert (tmp_path / "utilization.md").read_text() == md
    assert utilization.STUDY.parser("quick").parse_args([]).out == Path("runs/studies/utilization")


@pytest.mark.slow
def test_tokenizer_study_smallest_configuration(tmp_path):
    from studies import tokenizers

    tokenizers.main(["--steps", "4", "--seeds", "1", "--levels", "5", "--datasets", "digits", "--out", str(tmp_path)])
    result = json.loads((tmp_path / "tokenizers.json").read_text())
    assert set(result) == {"meta", "summary", "rows"}
    variants = {r["variant"] for r in result["summary"]}
    assert {"fsq", "ifsq", "erf_equal", "fsq_scale"} <= variants
    assert ("fsp" in variants) == result["meta"]["fsp_available"]
    for s in result["summary"]:
        assert {"dataset", "L", "variant", "psnr", "psnr_std", "ssim", "utilization", "codebook_usage"} <= set(s)
        assert 0 <= s["utilization"] <= 1 and 0 < s["codebook_usage"] <= 1
    assert all(r["curve"] and r["curve"][-1][0] == 4 for r in result["rows"])
    assert "learned_scale" in next(r for r in result["rows"] if r["variant"] == "fsq_scale")
    assert (tmp_path / "tokenizers.png").stat().st_size > 1000 and (tmp_path / "tokenizers.md").read_text()


@pytest.mark.slow
def test_bits_study_demo_evaluation_smallest_configuration(tmp_path):
    from studies import bits

    bits.main(["--evaluation", "demo", "--quick", "--steps", "4", "--levels", "3", "5", "--num-generated", "50", "--out", str(tmp_path)])
    result = json.loads((tmp_path / "bits.json").read_text())
    assert set(result) == {"meta", "summary", "rows"}
    assert [s["L"] for s in result["summary"]] == [3, 5]
    for s in result["summary"]:
        assert {"bits_per_dim", "psnr", "ar_fd", "diffusion_fd", "diffusion_fd_snapped", "fd_reconstruction", "ar_vocab_sizes"} <= set(s)
        assert s["ar_fd"] >= 0 and s["diffusion_fd"] >= 0
    assert result["summary"][0]["ar_vocab_sizes"] == [9, 9]
    assert (tmp_path / "bits.png").stat().st_size > 1000


@pytest.mark.slow
def test_ar_vs_diffusion_study_demo_evaluation_smallest_configuration(tmp_path):
    from studies import ar_vs_diffusion

    ar_vs_diffusion.main(["--evaluation", "demo", "--quick", "--steps", "4", "--eval-every", "2", "--num-generated", "50", "--out", str(tmp_path)])
    result = json.loads((tmp_path / "ar_vs_diffusion.json").read_text())
    assert set(result) == {"meta", "rows"}
    row = result["rows"][0]
    assert {"ar_params", "diffusion_params", "step_flops", "curves", "crossings_flops"} <= set(row)
    assert abs(row["diffusion_params"] - row["ar_params"]) / row["ar_params"] < 0.1  # matched parameter count
    for name in ("ar", "diffusion"):
        assert [p["step"] for p in row["curves"][name]] == [2, 4]
        assert row["curves"][name][1]["flops"] == 4 * row["step_flops"][name] > 0
    assert (tmp_path / "ar_vs_diffusion.png").stat().st_size > 1000


@pytest.mark.slow
def test_studies_run_as_modules_from_the_root(tmp_path):
    """The documented command form, ``python -m studies.<name>``, imports the examples' pipeline as a package."""
    proc = subprocess.run([sys.executable, "-m", "studies.utilization", "--samples", "2000", "--out", str(tmp_path)],
                          cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT / "src")), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "utilization.json").is_file()
    # the only sys.path edit: an example started as a path (python examples/x.py) makes the root importable
    for path in sorted((ROOT / "studies").glob("*.py")) + sorted((ROOT / "examples").glob("*.py")):
        lines = path.read_text().splitlines()
        for i, line in enumerate(lines):
            if "sys.path" in line:
                assert path.parent.name == "examples" and lines[i - 1].startswith('if __package__ in (None, ""):'), (
                    f"{path.name} edits sys.path outside the run-as-a-path bootstrap")


@pytest.mark.slow
def test_generation_study_smallest_configuration(tmp_path):
    from studies import generation

    generation.main(["--quick", "--steps", "4", "--split-sizes", "200", "100", "300", "200", "100", "--num-generated", "50",
                           "--num-val-samples", "20", "--n-boot", "10", "--repa", "--seeds", "2", "--out", str(tmp_path)])
    result = json.loads((tmp_path / "generation.json").read_text())
    assert set(result) == {"meta", "records", "paired"}  # the calibration rows go to protocol.json (below)
    command = result["meta"]["command"]  # the run's own arguments, so the outputs say how to reproduce them
    assert command.startswith("python -m studies.generation --quick --steps 4 ") and "--seeds 2" in command
    assert "--out" not in command
    records = result["records"]
    assert len(records) == 2 * 3 * 3  # seeds x tokenizers x generators
    assert {(r["tokenizer"], r["generator"]) for r in records} == {(t, g) for t in ("fsq", "ifsq", "erf_equal") for g in ("ar", "ar_repa", "dit")}
    cfg = result["meta"]["config"]
    for r in records:
        assert {"tokenizer", "generator", "seed", "guidance", "fd", "fd_ci", "kid", "kid_ci", "n_generated", "n_real", "accuracy",
                "tokenizer_psnr", "guidance_val_fd"} <= set(r)
        assert r["n_generated"] == 50 and r["n_real"] == 300 and 0 <= r["accuracy"] <= 1
        assert r["fd_ci"][0] <= r["fd"] <= r["fd_ci"][1] and r["kid_ci"][0] <= r["kid"] <= r["kid_ci"][1]
        sweep = cfg["ar_guidance"] if r["generator"] != "dit" else cfg["dit_guidance"]
        assert r["guidance"] in sweep and r["guidance_val_fd"][str(r["guidance"])] == min(r["guidance_val_fd"].values())
        if r["generator"] != "dit":  # stopped at the best validation loss
            assert r["val_loss"] == min(p["val_loss"] for p in r["val_curve"])
    # the same tokenizer (same seed) under every generator: the paired PSNR difference uses it once per seed
    comparisons = {d["comparison"]: d for d in result["paired"]}
    assert {"ifsq/ar - fsq/ar", "ifsq/dit - erf_equal/dit", "ifsq/ar_repa - ifsq/ar"} <= set(comparisons)
    d = comparisons["ifsq/ar - fsq/ar"]
    assert d["fd"]["n"] == 2 and d["fd"]["ci"][0] <= d["fd"]["mean"] <= d["fd"]["ci"][1]
    protocol = json.loads((tmp_path / "protocol.json").read_text())
    assert set(protocol["rows"]) == {"real_vs_real", "memorizer", "random_tokens"}
    assert all(row["n_generated"] == 50 and row["n_real"] == 300 for row in protocol["rows"].values())
    assert (tmp_path / "generation.png").stat().st_size > 5000 and "Calibration" in (tmp_path / "generation.md").read_text()


@pytest.mark.slow
def test_generation_study_seeds_in_parallel_parts_merge_to_the_serial_result(tmp_path):
    """``--seed-list`` runs one seed per process; ``--merge`` gives the records and paired differences
    one process over both seeds gives (every model is seeded by its seed alone)."""
    from studies import generation

    small = ["--quick", "--steps", "4", "--split-sizes", "200", "100", "300", "200", "100", "--num-generated", "50",
             "--num-val-samples", "20", "--n-boot", "10", "--generators", "ar", "--kinds", "fsq", "ifsq",
             "--tokenizer-steps", "6", "--tokenizer-lrs", "3e-3", "--tokenizer-eval-every", "3", "--ar-steps", "8", "--ar-eval-every", "2"]
    serial = generation.main(small + ["--seeds", "2", "--out", str(tmp_path / "serial")])
    for seed in (1, 0):
        generation.main(small + ["--seed-list", str(seed), "--out", str(tmp_path / f"part{seed}")])
    merged = generation.main(["--merge", str(tmp_path / "part1"), str(tmp_path / "part0"), "--out", str(tmp_path / "merged")])
    assert merged["meta"]["seeds"] == [0, 1] and len(merged["meta"]["parts"]) == 2
    assert merged["meta"]["config"]["tokenizer"]["steps"] == 6 and merged["meta"]["config"]["tokenizer_lrs"] == [3e-3]
    for a, b in zip(serial["records"], merged["records"], strict=True):
        drop = ("seconds",)
        assert {k: v for k, v in a.items() if k not in drop} == {k: v for k, v in b.items() if k not in drop}
        assert b["tokenizer_steps"] == 6 and [c["step"] for c in b["tokenizer_lr_sweep"]["0.003"]["val_curve"]] == [3, 6]
        assert [c["step"] for c in b["val_curve"]] == [2, 4, 6, 8] and b["val_loss"] == min(c["val_loss"] for c in b["val_curve"])
    assert serial["paired"] == merged["paired"]
    md = (tmp_path / "merged" / "generation.md").read_text()  # the AR length in the header, each model's best validation loss in its row
    assert "AR transformers: 8 steps" in md and f"| {b['val_loss']:.3f} ({b['best_step']:,}) |" in md
    protocol = json.loads((tmp_path / "merged" / "protocol.json").read_text())
    assert protocol["rows"] == json.loads((tmp_path / "serial" / "protocol.json").read_text())["rows"]
    assert "--merge" in protocol["meta"]["command"] and (tmp_path / "merged" / "generation.png").exists()
    with pytest.raises(ValueError, match="overlap"):
        generation.main(["--merge", str(tmp_path / "part0"), str(tmp_path / "serial"), "--out", str(tmp_path / "bad")])
    for part in ("part0", "part1"):  # parts that swept two learning rates, each on its own seed
        (tmp_path / f"swept_{part}").mkdir()
        (tmp_path / f"swept_{part}" / "protocol.json").write_text((tmp_path / part / "protocol.json").read_text())
        result = json.loads((tmp_path / part / "generation.json").read_text())
        result["meta"]["config"]["tokenizer_lrs"] = [3e-3, 6e-3]
        (tmp_path / f"swept_{part}" / "generation.json").write_text(json.dumps(result))
    with pytest.raises(ValueError, match="learning rates"):
        generation.main(["--merge", str(tmp_path / "swept_part0"), str(tmp_path / "swept_part1"), "--out", str(tmp_path / "bad")])


@pytest.mark.slow
def test_convergence_study_smallest_configuration(tmp_path):
    """The tokenizer convergence study: the LR sweep on the first seed only, later seeds reuse each
    bottleneck's choice, a validation curve per run, paired PSNR differences over the seeds."""
    from studies import convergence

    convergence.main(["--quick", "--steps", "4", "--seeds", "2", "--lrs", "4e-3", "8e-3", "--split-sizes", "200", "100", "100",
                            "--out", str(tmp_path)])
    result = json.loads((tmp_path / "convergence.json").read_text())
    assert result["meta"]["command"].startswith("python -m studies.convergence --quick --steps 4 ")
    runs = result["runs"]
    assert [(r["kind"], r["seed"]) for r in runs] == [(k, s) for s in (0, 1) for k in ("fsq", "ifsq", "erf_equal")]
    for r in runs:
        assert r["lr"] in (4e-3, 8e-3) and r["psnr"] > 0 and [c["step"] for c in r["val_curve"]] == [2, 4]
        swept = list(r["lr_sweep"])
        assert swept == (["0.004", "0.008"] if r["seed"] == 0 else [str(runs[["fsq", "ifsq", "erf_equal"].index(r["kind"])]["lr"])])
        # the chosen LR is the best by validation PSNR, and its curve ends at that PSNR
        assert r["lr_sweep"][str(r["lr"])]["val_psnr"] == max(v["val_psnr"] for v in r["lr_sweep"].values())
        assert r["val_curve"][-1]["val_psnr"] == pytest.approx(r["lr_sweep"][str(r["lr"])]["val_psnr"])
    diffs = {p["comparison"]: p["psnr"] for p in result["paired"]}
    assert set(diffs) == {"ifsq - fsq", "erf_equal - ifsq", "erf_equal - fsq"}
    psnr = {(r["kind"], r["seed"]): r["psnr"] for r in runs}
    assert diffs["ifsq - fsq"]["differences"] == pytest.approx([psnr["ifsq", s] - psnr["fsq", s] for s in (0, 1)])
    assert (tmp_path / "convergence.png").stat().st_size > 5000 and "Paired differences" in (tmp_path / "convergence.md").read_text()


@pytest.mark.slow
def test_mechanism_study_smallest_configuration(tmp_path):
    from studies import mechanism

    mechanism.main(["--quick", "--steps", "4", "--scales", "0.4", "2.5", "--n-train", "100", "--out", str(tmp_path)])
    result = json.loads((tmp_path / "mechanism.json").read_text())
    assert set(result) == {"meta", "summary", "rows"}
    fixed = [r for r in result["rows"] if not r["learnable"]]
    assert {(r["encoder"], r["kind"], r["s"]) for r in fixed} == {(e, k, s) for e in ("normalized", "free") for k in ("fsq", "ifsq", "erf_equal")
                                                                  for s in (0.4, 2.5)}
    for r in result["rows"]:
        assert {"psnr", "utilization", "latent_std", "latent_kurtosis", "saturated", "learned_scale"} <= set(r)
        assert 0 <= r["utilization"] <= 1 and 0 <= r["saturated"] <= 1 and r["latent_std"] > 0
    assert all(abs(r["learned_scale"] - r["s"]) < 1e-6 for r in fixed)  # fixed scales stay fixed
    control = [r for r in result["rows"] if r["learnable"]]
    assert {r["encoder"] for r in control} == {"normalized", "free"}
    assert all(r["s"] == 1.0 and r["kind"] == "fsq" for r in control)  # initialized at 1.0, not iFSQ's 0.8
    by = {(r["encoder"], r["kind"], r["s"]): r for r in fixed}
    assert by[("free", "fsq", 2.5)]["latent_std"] > by[("free", "fsq", 0.4)]["latent_std"]  # the scale reaches the pre-bound latents
    # with the normalized encoder output the latent std is s (running statistics; a few steps leave them close to the batch ones)
    assert by[("normalized", "fsq", 2.5)]["latent_std"] > 4 * by[("normalized", "fsq", 0.4)]["latent_std"]
    assert by[("normalized", "fsq", 2.5)]["saturated"] > by[("normalized", "fsq", 0.4)]["saturated"]
    assert (tmp_path / "mechanism.png").stat().st_size > 5000


@pytest.mark.slow
def test_ar_vs_diffusion_study_smallest_configuration(tmp_path):
    from studies import ar_vs_diffusion

    ar_vs_diffusion.main(["--quick", "--steps", "4", "--eval-every", "2", "--split-sizes", "200", "100", "300", "200", "--num-generated", "40",
                "--num-val-samples", "20", "--n-boot", "10", "--out", str(tmp_path)])
    result = json.loads((tmp_path / "ar_vs_diffusion.json").read_text())
    assert set(result) == {"meta", "protocol", "rows"} and result["meta"]["evaluation"] == "protocol"
    row = result["rows"][0]
    assert abs(row["diffusion_params"] - row["ar_params"]) / row["ar_params"] < 0.1
    cfg = result["meta"]["config"]
    for name, scales in (("ar", cfg["ar_guidance"]), ("diffusion", cfg["dit_guidance"])):
        curve = row["curves"][name]
        assert [p["step"] for p in curve] == [2, 4]
        for p in curve:  # guidance swept and chosen on validation at every checkpoint; validation loss and sampling cost logged
            assert set(p["guidance_val_fd"]) == {str(float(s)) for s in scales} and p["guidance"] in scales
            assert p["guidance_val_fd"][str(p["guidance"])] == min(p["guidance_val_fd"].values())
            assert p["val_loss"] > 0 and p["sampling_flops_per_image"] > 0 and p["n_generated"] == 40 and p["n_real"] == 300
            assert p["fd_ci"][0] <= p["fd"] <= p["fd_ci"][1]
        assert curve[1]["flops"] == 4 * row["step_flops"][name]
    assert result["protocol"]["real_vs_real"]["n_generated"] == 40
    assert (tmp_path / "ar_vs_diffusion.png").stat().st_size > 5000


@pytest.mark.slow
def test_bits_study_smallest_configuration(tmp_path):
    from studies import bits

    bits.main(["--quick", "--steps", "4", "--levels", "3", "5", "--split-sizes", "200", "100", "300", "200", "100",
                              "--num-generated", "40", "--num-val-samples", "20", "--n-boot", "10", "--out", str(tmp_path)])
    result = json.loads((tmp_path / "bits.json").read_text())
    assert {(r["L"], r["generator"]) for r in result["records"]} == {(L, g) for L in (3, 5) for g in ("ar", "dit")}
    for r in result["records"]:
        assert r["tokenizer"] == "ifsq" and r["n_generated"] == 40 and r["n_real"] == 300 and r["fd_ci"][0] <= r["fd"] <= r["fd_ci"][1]
        assert r["ar_vocab_sizes"] == [r["L"] ** 2] * 2
        if r["generator"] == "ar":
            assert r["val_curve"] and r["val_loss"] == min(p["val_loss"] for p in r["val_curve"])
    assert set(result["lowest_fd_L"]) == {"ar", "dit"} and result["real_vs_real"]["n_generated"] == 40
    assert (tmp_path / "bits.png").stat().st_size > 5000


def test_speed_bandwidth_columns():
    """bench_speed on CUDA: each eager forward's effective bandwidth (read z, write codes and one
    index per row: int64 ours, int32 vector-quantize-pytorch's) against a copy of z; none without a copy."""
    from benchmarks import bench_speed

    n, d = 4 << 20, 4
    seconds = {"FSQ": 2e-3, "iFSQ": 1e-3, "vqp FSQ": 4e-3, "sigmoid": 1e-3}
    row = bench_speed._ratios({"elements": n, "levels": "[17]*4", "pass": "fwd", "seconds": dict(seconds, copy=5e-4)}, d)
    assert row["copy GB/s"] == pytest.approx(8 * n / 5e-4 / 1e9)
    assert row["iFSQ GB/s"] == pytest.approx((8 * n + 8 * n // d) / 1e-3 / 1e9)
    assert row["vqp FSQ GB/s"] == pytest.approx((8 * n + 4 * n // d) / 4e-3 / 1e9)
    assert row["iFSQ GB/s / copy"] == pytest.approx(row["iFSQ GB/s"] / row["copy GB/s"])
    md = bench_speed.to_markdown([row], dict(device="test", torch="x", threads=1, repeats=1))
    assert "effective bandwidth" in md and f"{row['iFSQ GB/s / copy']:.2f} |" in md
    cpu = bench_speed._ratios({"elements": n, "levels": "[17]*4", "pass": "fwd", "seconds": dict(seconds)}, d)
    assert "copy GB/s" not in cpu and "effective bandwidth" not in bench_speed.to_markdown([cpu], dict(device="t", torch="x", threads=1, repeats=1))


def test_training_length_table_groups_by_steps_and_pairs_by_seed(tmp_path):
    """The trend table: one row per (tokenizer, AR) length, PSNR taken once per tokenizer, differences paired by seed."""
    from studies import training_length

    def gen_record(kind, seed, psnr, fd, generator):
        return dict(tokenizer=kind, seed=seed, generator=generator, tokenizer_psnr=psnr, fd=fd)

    psnr = {("fsq", 0): 30.0, ("fsq", 1): 31.0, ("ifsq", 0): 30.5, ("ifsq", 1): 31.1, ("erf_equal", 0): 31.0, ("erf_equal", 1): 31.2}

    def generation(ar_steps, ifsq_fd_gap):
        return dict(meta=dict(config=dict(tokenizer=dict(steps=1000), ar=dict(steps=ar_steps))),
                    records=[gen_record(k, s, p, 50.0 + 10 * s + (k == "ifsq") * ifsq_fd_gap * (1 + s), g)
                             for (k, s), p in psnr.items() for g in ("ar", "dit")])

    convergence = dict(meta=dict(config=dict(tokenizer=dict(steps=3000))),
                       runs=[dict(kind=k, seed=s, psnr=p + 3) for (k, s), p in psnr.items()])
    ifsq_only = dict(meta=dict(config=dict(tokenizer=dict(steps=9000))),
                     runs=[dict(kind=k, seed=s, psnr=p + 5) for (k, s), p in psnr.items() if k == "ifsq"])
    results = (("generation.json", generation(1200, 2)), ("generation_long_ar.json", generation(9000, -4)), ("convergence.json", convergence),
               ("ifsq_only.json", ifsq_only))
    paths = []
    for name, result in results:
        paths.append(tmp_path / name)
        paths[-1].write_text(json.dumps(result))
    md = training_length.main([str(p) for p in reversed(paths)] + ["--out", str(tmp_path / "out")]).splitlines()
    assert (tmp_path / "out" / "training_length.md").read_text().splitlines() == md

    def cells(row: int) -> list[str]:
        return [c.strip() for c in md[row].split("|")[1:-1]]

    assert len(md) == 6 and md[2].startswith("| 1,000 | 1,200 |") and md[3].startswith("| 1,000 | 9,000 |") and md[4].startswith("| 3,000 | – |")
    row = cells(2)
    assert row[3] == "30.50 / 30.80 / 31.10"  # each tokenizer once, not once per generator
    assert row[4].startswith("+0.30 [") and row[5].startswith("+0.30 [")  # iFSQ - FSQ: +0.5, +0.1; erf - iFSQ: +0.5, +0.1
    assert row[6].startswith("+3.0 [") and row[7].startswith("+3.0 [")  # FD: +2, +4
    row = cells(3)  # same tokenizers, longer AR: its own row, not mixed with the 1,200-step one
    assert row[3] == "30.50 / 30.80 / 31.10" and row[6].startswith("-6.0 [")  # FD: -4, -8
    row = cells(4)
    assert row[3] == "33.50 / 33.80 / 34.10" and row[6] == row[7] == "–"
    row = cells(5)  # bottlenecks a study did not train: a dash, not nan
    assert row[3] == "– / 35.80 / –" and row[4] == "–"
    with pytest.raises(SystemExit, match="repeats"):  # the same models twice would be counted twice
        training_length.main([str(paths[0]), str(paths[0]), "--out", str(tmp_path / "out")])


# ----------------------------------------------------------------------------- the committed results

RESULTS = ROOT / "studies" / "results"
COMMITTED = sorted(p.parent for p in RESULTS.rglob("*.json") if p.stem == p.relative_to(RESULTS).parts[0])  # <study>/[option/]<study>.json


def study_of(folder: Path):
    import importlib

    return importlib.import_module(f"studies.{folder.relative_to(RESULTS).parts[0]}")


def test_every_study_has_committed_results():
    studies = {p.relative_to(RESULTS).parts[0] for p in COMMITTED}
    assert studies == {"utilization", "tokenizers", "mechanism", "convergence", "generation", "bits", "ar_vs_diffusion"}
    assert (RESULTS / "training_length" / "training_length.md").is_file()


@pytest.mark.parametrize("folder", COMMITTED, ids=lambda p: str(p.relative_to(RESULTS)))
def test_committed_tables_are_their_json(folder):
    """Each committed table is what ``--from-json`` writes from the committed JSON (figures too, by the same code)."""
    module = study_of(folder)
    result = module.STUDY.load(folder)
    assert module.to_markdown(result) == (folder / f"{module.STUDY.name}.md").read_text()
    assert (folder / f"{module.STUDY.name}.png").stat().st_size > 5000


def test_committed_training_length_table_is_the_committed_json(tmp_path):
    from studies import training_length

    assert training_length.main(["--out", str(tmp_path)]) == (RESULTS / "training_length" / "training_length.md").read_text()


class _Configured(Exception):
    pass


@pytest.mark.parametrize("folder", [f for f in COMMITTED if f.name not in ("utilization", "tokenizers")], ids=lambda p: str(p.relative_to(RESULTS)))
def test_the_recorded_command_rebuilds_the_recorded_configuration(folder, monkeypatch):
    """The command each result records (each part's, for merged runs) gives today's code the configuration the result was
    computed with (stopped before anything trains, where the study asks for its seeds)."""
    import shlex

    from studies.harness import Study

    def stop(args, cfg):
        raise _Configured(cfg)

    monkeypatch.setattr(Study, "seeds", staticmethod(stop))
    module = study_of(folder)
    meta = module.STUDY.load(folder)["meta"]
    for command in [part["command"] for part in meta.get("parts", [])] or [meta["command"]]:
        words = shlex.split(command)
        assert words[:3] == ["python", "-m", module.__name__]
        with pytest.raises(_Configured) as stopped:
            module.main(shlex.split(re.sub(r"--seed-list \d+", "", " ".join(words[3:]))))  # the seeds do not change the configuration
        assert json.loads(json.dumps(stopped.value.args[0])) == meta["config"], command


def test_results_md_names_every_committed_command_and_figure():
    """studies/RESULTS.md reproduces each committed result by the command the result records, with its folder as --out,
    shows its figure, and does not narrate its own development."""
    text = (ROOT / "studies" / "RESULTS.md").read_text()
    flat = re.sub(r"\s+", " ", text.replace("\\\n", " "))  # shell lines continued with a backslash, joined
    for folder in COMMITTED:
        module = study_of(folder)
        meta = module.STUDY.load(folder)["meta"]
        rel = folder.relative_to(ROOT)
        assert f"{meta['command']} --out {rel}" in flat, (rel, meta["command"])
        for part in meta.get("parts", []):
            assert re.sub(r"--seed-list \d+", "--seed-list $s", part["command"]) in flat, part["command"]
        assert f"(results/{folder.relative_to(RESULTS)}/{module.STUDY.name}.png)" in text, rel
    assert "python -m studies.training_length --out studies/results/training_length" in text
    for word in ("issue", "session", "previous", "now", "pass", "passes", "rerun", "reruns", "earlier", "status"):
        assert not re.search(rf"\b{word}\b", text, re.IGNORECASE), word


def test_bench_speed_decode_compares_the_same_work():
    """The decode benchmark times ours and vqp's on the same indices, with the same results."""
    pytest.importorskip("vector_quantize_pytorch")
    from benchmarks import bench_speed
    cpu = torch.device("cpu")
    for name, (ours, theirs) in bench_speed.decode_cases(cpu).items():
        torch.testing.assert_close(ours(), theirs(), msg=name)
    rows = bench_speed.measure_decode(cpu, repeats=1, warmup=0)
    assert len(rows) == 2 * len({1, torch.get_num_threads()}) and all(r["vqp/ours"] > 0 for r in rows)
    md = bench_speed.to_markdown([], dict(device="t", torch="x", threads=1, repeats=1), rows)
    assert "| `FSQ.indices_to_codes (64, 16384)` | 1 |" in md
