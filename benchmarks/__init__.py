"""Studies and benchmarks (not shipped in the wheel). Run the studies from the repository root as modules,
``python -m benchmarks.study_bits``, so that ``examples`` and ``benchmarks`` import as packages."""
