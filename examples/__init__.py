"""End-to-end examples for ifsq-quant (not shipped in the wheel).

Run from the repository root: ``python examples/end_to_end.py --preset quick --out runs/quick``.
"""
