"""The paper's claims measured at a small scale (not shipped in the wheel). The report: ``studies/RESULTS.md``.

Each study is a module, run from the repository root::

    python -m studies.generation --quick                     # minutes; writes runs/studies/generation/
    python -m studies.generation --out studies/results/generation    # the full mode, as committed
    python -m studies.generation --from-json studies/results/generation  # its tables and figure again, from the JSON

- ``harness``: the command line every study shares (modes, seeds, output folder, ``--from-json``) and
  how results are written (JSON, Markdown table, PNG figure, the command that reproduces them);
- ``protocol``: the calibrated evaluation (FD / KID with bootstrap intervals against held-out real images,
  calibration rows, guidance chosen on a validation split); ``stats``: paired differences over seeds;
- ``font_digits``: the protocol's data, digits rendered from the fonts matplotlib ships;
- ``recipes``: the protocol studies' shared configuration and training recipes (a tokenizer with its
  learning rate chosen on validation, an AR transformer stopped at its best validation loss, ...);
- the studies: ``utilization``, ``tokenizers``, ``mechanism``, ``convergence``, ``generation`` (the headline
  test), ``bits``, ``ar_vs_diffusion``, and ``training_length`` (a table from the others' JSON).

The models, their training and sampling come from ``examples/pipeline.py``, the same code the demo runs.
"""
