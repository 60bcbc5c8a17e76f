"""End-to-end examples for ifsq-quant (not shipped in the wheel).

- ``data``: embedded offline datasets (scikit-learn digits, digits rendered from fonts, photo patches);
- ``tokenizer``, ``ar``, ``diffusion``: the models; ``metrics``: PSNR/SSIM, FD, KID and the calibrated protocol;
- ``pipeline``: training and sampling, one function per stage (used by the demo and by ``benchmarks/``);
- ``report``: figures and the demo's report; ``end_to_end``: the demo's command line.

Run from the repository root: ``python examples/end_to_end.py --preset quick --out runs/quick``.
"""
