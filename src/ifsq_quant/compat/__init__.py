"""The semantics of published FSQ code, reproduced bit for bit: one module per family.

* :mod:`.vqp`: vector-quantize-pytorch's releases (``vqp_version=``) and its other FSQ methods;
* :mod:`.official`: the official iFSQ code's configs (``iFSQ.from_official_config``);
* :mod:`.nemo`: NVIDIA NeMo's ``FiniteScalarQuantizer`` and ``GroupFiniteScalarQuantizer``;
* :mod:`.stable_codec`: Stable Codec's and stable-audio-tools' ``DitheredFSQ`` and ``ResidualFSQBottleneck``;
* :mod:`.s3tokenizer`: S3Tokenizer's ``FSQCodebook`` and ``FSQVectorQuantization``.

Each is built on the core (:mod:`ifsq_quant.bins`, :mod:`ifsq_quant.kernels`, :mod:`ifsq_quant.indexing`);
what it does differently from the code it reproduces is in its docstring and ``docs/compat.md``.
"""
