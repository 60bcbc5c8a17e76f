"""Speed of FSQ / iFSQ against vector-quantize-pytorch's FSQ and one torch.sigmoid pass, and of
decoding (``FSQ.indices_to_codes``, ``ResidualFSQ.get_output_from_indices``) against theirs.

Interleaved in one process (A B C A B C ...), median of ``--repeats`` runs. Writes
``runs/bench/speed_<device>.md`` and ``.json`` (``--out`` another folder; the committed results in
``benchmarks/results/`` change only when ``--out`` names them). Ratios are what carry over between
machines; absolute times mean something only on a GPU.

    python benchmarks/bench_speed.py                 # CPU, 1M/4M/16M elements, into runs/bench/
    python benchmarks/bench_speed.py --out benchmarks/results   # rewrites the committed speed_cpu.{md,json}
    python benchmarks/bench_speed.py --quick         # 1M elements only, fewer repeats
    python benchmarks/bench_speed.py --sizes 4194304 --levels '[17]*4' --compiled --load 2
        # also ours and vqp under torch.compile, with two busy background processes

``--compiled`` adds ``torch.compile`` (inductor) columns: our modules (the registered fused op
inside the compiled graph) and vector-quantize-pytorch's FSQ. ``--load N`` runs the
measurements while N processes spin on the other cores (a loaded machine).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from ifsq_quant import FSQ, ResidualFSQ, iFSQ

try:
    from vector_quantize_pytorch import FSQ as VqpFSQ
    from vector_quantize_pytorch import ResidualFSQ as VqpResidualFSQ
except ImportError:  # the comparison column is then reported as missing
    VqpFSQ = VqpResidualFSQ = None

LEVELS = {"[8,5,5,5]": [8, 5, 5, 5], "[17]*4": [17] * 4, "[17]*8": [17] * 8}
# The default output folder: ignored by git, so that a run as the docs write it leaves the committed
# results in benchmarks/results/ as they are.
RESULTS = Path(__file__).resolve().parent.parent / "runs" / "bench"


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _timer(fn, device):
    def run():
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        return time.perf_counter() - start
    return run


def candidates(levels, z, device, backward, compiled=False):
    """name -> zero-argument callable doing one forward (or forward+backward)."""
    mods = {"FSQ": FSQ(levels).to(device), "iFSQ": iFSQ(levels).to(device)}
    if VqpFSQ is not None and math.prod(levels) < 2**24:  # theirs builds its whole codebook eagerly
        mods["vqp FSQ"] = VqpFSQ(levels).to(device)
    if compiled:
        # inductor's own fusion of the plain-PyTorch reference, the alternative to keeping our op
        mods["iFSQ reference"] = iFSQ(levels, backend="reference").to(device)
        for name in list(mods):
            mods[f"{name} compiled"] = torch.compile(mods[name])
        del mods["iFSQ reference"]
    out = {}
    for name, module in mods.items():
        if backward:
            x = z.detach().clone().requires_grad_(True)

            def step(module=module, x=x):
                module(x)[0].backward(torch.ones_like(x))
                x.grad = None
        else:
            def step(module=module):
                with torch.no_grad():
                    module(z)
        out[name] = step
    if backward:
        xs = z.detach().clone().requires_grad_(True)

        def sigmoid_step():
            torch.sigmoid(xs).backward(torch.ones_like(xs))
            xs.grad = None
        out["sigmoid"] = sigmoid_step
    else:
        out["sigmoid"] = lambda: torch.sigmoid(z)
    if device.type == "cuda" and not backward:  # the bandwidth reference: one device-to-device copy of z
        out["copy"] = lambda: z.clone()
    return out


def measure(levels, numel, device, backward, repeats, warmup=2, compiled=False):
    d = len(levels)
    z = torch.randn(16, numel // (16 * d), d, device=device)
    fns = {name: _timer(fn, device) for name, fn in candidates(levels, z, device, backward, compiled).items()}
    return _interleaved_medians(fns, repeats, warmup)


def _interleaved_medians(timers, repeats, warmup):
    """name -> median seconds of ``timers`` (name -> callable returning seconds), run A B C A B C ..."""
    for _ in range(warmup):
        for timer in timers.values():
            timer()
    times = {name: [] for name in timers}
    for _ in range(repeats):
        for name, timer in timers.items():
            times[name].append(timer())
    return {name: statistics.median(ts) for name, ts in times.items()}


def decode_cases(device):
    """The decodes codecs run at inference: name -> (ours, vqp's or None), zero-argument callables."""
    levels = [8, 5, 5, 5]
    generator = torch.Generator().manual_seed(0)
    fsq_indices = torch.randint(0, math.prod(levels), (64, 16384), generator=generator).to(device)
    residual_indices = torch.randint(0, math.prod(levels), (16, 2048, 4), generator=generator).to(device)
    ours_fsq, ours_residual = FSQ(levels).to(device), ResidualFSQ(dim=64, levels=levels, num_quantizers=4).to(device).eval()
    cases = {"FSQ.indices_to_codes (64, 16384)": [lambda: ours_fsq.indices_to_codes(fsq_indices), None],
             "ResidualFSQ.get_output_from_indices (16, 2048, 4)": [lambda: ours_residual.get_output_from_indices(residual_indices), None]}
    if VqpFSQ is not None:
        theirs_fsq = VqpFSQ(levels).to(device)
        theirs_residual = VqpResidualFSQ(dim=64, levels=levels, num_quantizers=4).to(device).eval()
        theirs_residual.load_state_dict(ours_residual.state_dict())  # the same projections
        cases["FSQ.indices_to_codes (64, 16384)"][1] = lambda: theirs_fsq.indices_to_codes(fsq_indices)
        cases["ResidualFSQ.get_output_from_indices (16, 2048, 4)"][1] = lambda: theirs_residual.get_output_from_indices(residual_indices)
    return cases


def measure_decode(device, repeats, warmup=2):
    """Rows of decode times (ours and vqp's, interleaved medians) on one thread and on all."""
    rows = []
    all_threads = torch.get_num_threads()
    for threads in sorted({1, all_threads}) if device.type == "cpu" else [all_threads]:
        torch.set_num_threads(threads)
        try:
            with torch.no_grad():
                for name, (ours, theirs) in decode_cases(device).items():
                    fns = {"ours": _timer(ours, device)} | ({"vqp": _timer(theirs, device)} if theirs else {})
                    seconds = _interleaved_medians(fns, repeats, warmup)
                    ratio = seconds["vqp"] / seconds["ours"] if "vqp" in seconds else None
                    rows.append({"decode": name, "threads": threads, "seconds": seconds, "vqp/ours": ratio})
                    print(json.dumps(rows[-1]))
        finally:
            torch.set_num_threads(all_threads)
    return rows


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--sizes", type=int, nargs="+", default=[2**20, 2**22, 2**24])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--quick", action="store_true", help="1M elements, 5 repeats")
    parser.add_argument("--levels", nargs="+", choices=list(LEVELS), default=list(LEVELS))
    parser.add_argument("--compiled", action="store_true", help="add torch.compile columns (ours and vqp)")
    parser.add_argument("--load", type=int, default=0, help="busy background processes during the runs")
    parser.add_argument("--out", type=Path, default=RESULTS, help="output folder (default: runs/bench in the repository)")
    parser.add_argument("--stem", default=None, help="output file name stem (default speed_<device>)")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.quick:
        args.sizes, args.repeats = [2**20], 5
    device = torch.device(args.device)
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.load)]
    rows = []
    try:
        for numel in args.sizes:
            for label in args.levels:
                for backward in (False, True):
                    t = measure(LEVELS[label], numel, device, backward, args.repeats, compiled=args.compiled)
                    rows.append(_ratios({"elements": numel, "levels": label, "pass": "fwd+bwd" if backward else "fwd", "seconds": t},
                                        len(LEVELS[label])))
                    print(json.dumps(rows[-1]))
        decode_rows = measure_decode(device, args.repeats)
    finally:
        for process in busy:
            process.kill()
    meta = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine(),
        "torch": torch.__version__, "threads": torch.get_num_threads(), "repeats": args.repeats,
        "python": platform.python_version(), "busy_background_processes": args.load,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.stem or f"speed_{device.type}"
    (args.out / f"{stem}.json").write_text(json.dumps({"meta": meta, "rows": rows, "decode": decode_rows}, indent=1))
    (args.out / f"{stem}.md").write_text(to_markdown(rows, meta, decode_rows))
    print(to_markdown(rows, meta, decode_rows))


def _ratios(row, d):
    """Adds the ratios of a row's median times (``a/b`` > 1: ``b`` is faster) and, where a copy was
    timed (CUDA forward rows), each eager forward's effective bandwidth: the bytes it must move
    (read float32 ``z``, write the codes and one index per ``d`` elements: int64 ours, int32
    vector-quantize-pytorch's) over its time, in GB/s and as a fraction of the copy's (a clone
    reads and writes ``z``: 8 bytes per element)."""
    t = row["seconds"]
    if "copy" in t:
        n = row["elements"] // d * d
        row["copy GB/s"] = 8 * n / t["copy"] / 1e9
        for name, index_bytes in (("FSQ", 8), ("iFSQ", 8), ("vqp FSQ", 4)):
            if name in t:
                row[f"{name} GB/s"] = (8 * n + index_bytes * n // d) / t[name] / 1e9
                row[f"{name} GB/s / copy"] = row[f"{name} GB/s"] / row["copy GB/s"]
    for ours in ("FSQ", "iFSQ"):
        row[f"vqp/{ours}"] = t["vqp FSQ"] / t[ours] if "vqp FSQ" in t else None
        row[f"{ours}/sigmoid"] = t[ours] / t["sigmoid"]
        if f"{ours} compiled" in t:
            row[f"{ours} compiled/eager"] = t[f"{ours} compiled"] / t[ours]
            if ours == "iFSQ" and "iFSQ reference compiled" in t:
                row["reference compiled/iFSQ compiled"] = t["iFSQ reference compiled"] / t["iFSQ compiled"]
            if "vqp FSQ compiled" in t:
                row[f"vqp compiled/{ours} compiled"] = t["vqp FSQ compiled"] / t[f"{ours} compiled"]
    return row


def to_markdown(rows, meta, decode_rows=()):
    def fmt(v):
        return "n/a" if v is None else f"{v:.2f}x"
    lines = [
        f"Device: {meta['device']}, torch {meta['torch']}, {meta['threads']} threads, median of {meta['repeats']} interleaved runs.",
        "Ratios: `vqp/ours` > 1 means ours is faster than vector-quantize-pytorch's FSQ; `ours/sigmoid` is our cost in",
        "units of one `torch.sigmoid` pass over the same tensor (forward) or sigmoid forward+backward. n/a: vqp cannot",
        "run this codebook (it materializes all 17^8 codes).",
        "",
        "| elements | levels | pass | vqp/FSQ | vqp/iFSQ | FSQ/sigmoid | iFSQ/sigmoid | FSQ ms | iFSQ ms | vqp ms |",
        "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    compiled = [r for r in rows if "iFSQ compiled/eager" in r]
    if compiled:
        lines[-2:-2] = [
            "Compiled columns (`torch.compile`, inductor): `compiled/eager` is our compiled module's time over our eager",
            "module's (the target is <= 1.25); `vqpC/oursC` > 1 means ours compiled is faster than vqp compiled.", "",
        ]
    for r in rows:
        t = r["seconds"]
        vqp_ms = f"{t['vqp FSQ'] * 1e3:.1f}" if "vqp FSQ" in t else "n/a"
        lines.append(
            f"| {r['elements'] / 2**20:.0f}M | {r['levels']} | {r['pass']} | {fmt(r['vqp/FSQ'])} | {fmt(r['vqp/iFSQ'])} | "
            f"{fmt(r['FSQ/sigmoid'])} | {fmt(r['iFSQ/sigmoid'])} | {t['FSQ'] * 1e3:.1f} | {t['iFSQ'] * 1e3:.1f} | {vqp_ms} |"
        )
    if compiled:
        lines += ["", "`refC/iFSQC` > 1 means inductor's fusion of the reference is slower than our op inside the compiled graph.", "",
                  "| elements | levels | pass | FSQ compiled/eager | iFSQ compiled/eager | vqpC/FSQC | vqpC/iFSQC | refC/iFSQC | vqp compiled ms |",
                  "|---:|---|---|---:|---:|---:|---:|---:|---:|"]
        for r in compiled:
            vqp_c = r["seconds"].get("vqp FSQ compiled")
            lines.append(
                f"| {r['elements'] / 2**20:.0f}M | {r['levels']} | {r['pass']} | {fmt(r['FSQ compiled/eager'])} | "
                f"{fmt(r['iFSQ compiled/eager'])} | {fmt(r.get('vqp compiled/FSQ compiled'))} | "
                f"{fmt(r.get('vqp compiled/iFSQ compiled'))} | {fmt(r.get('reference compiled/iFSQ compiled'))} | "
                f"{'n/a' if vqp_c is None else f'{vqp_c * 1e3:.1f}'} |")
    bandwidth = [r for r in rows if "copy GB/s" in r]
    if bandwidth:
        lines += ["", "Forward effective bandwidth (read z, write codes and indices) against a device-to-device copy of z:", "",
                  "| elements | levels | copy GB/s | FSQ GB/s | iFSQ GB/s | vqp GB/s | iFSQ / copy |", "|---:|---|---:|---:|---:|---:|---:|"]
        for r in bandwidth:
            vqp = f"{r['vqp FSQ GB/s']:.0f}" if "vqp FSQ GB/s" in r else "n/a"
            lines.append(f"| {r['elements'] / 2**20:.0f}M | {r['levels']} | {r['copy GB/s']:.0f} | {r['FSQ GB/s']:.0f} | "
                         f"{r['iFSQ GB/s']:.0f} | {vqp} | {r['iFSQ GB/s / copy']:.2f} |")
    if decode_rows:
        lines += ["", "Decoding ([8,5,5,5]; `vqp/ours` > 1 means ours is faster):", "",
                  "| decode | threads | vqp/ours | ours ms | vqp ms |", "|---|---:|---:|---:|---:|"]
        for r in decode_rows:
            vqp = r["seconds"].get("vqp")
            lines.append(f"| `{r['decode']}` | {r['threads']} | {fmt(r['vqp/ours'])} | {r['seconds']['ours'] * 1e3:.2f} | "
                         f"{'n/a' if vqp is None else f'{vqp * 1e3:.2f}'} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
