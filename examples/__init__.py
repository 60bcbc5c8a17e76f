"""Examples for ifsq-quant (in the repository, not shipped in the wheel).

What a user starts from, each run as a module from the repository root (``python -m examples.<name>``) or as
a path from anywhere (``python path/to/examples/<name>.py``):

- ``minimal_autoencoder``: iFSQ in a small conv autoencoder on scikit-learn's digits, image -> indices -> image,
  with a PNG of its reconstructions (``python -m examples.minimal_autoencoder``, about a minute);
- ``train_tokenizer``: an FSQ or iFSQ tokenizer trained on a folder of one's own images (also under ``torchrun``:
  DDP or FSDP2), the folder encoded to token indices and indices decoded to images
  (``python -m examples.train_tokenizer train|encode|decode ...``);
- ``end_to_end``: the demo, tokenizers -> AR transformer and DiT, measured (``python -m examples.end_to_end --preset quick --out runs/quick``).

The modules under them, one concept each:

- ``tokenizer``, ``ar``, ``diffusion``: the models; ``metrics``: PSNR/SSIM, the FD feature network, FD;
- ``data``: embedded offline datasets (scikit-learn digits, photo patches); ``image_folder``: a folder of images
  (pixel modes, 16-bit), lazily decoding datasets, PNG output;
- ``training``: the training loop and where it runs; ``checkpoints``: safetensors checkpoints;
- ``presets``: the demo's configurations; ``pipeline``: building, training and sampling, one function per stage
  (used by the demo and by the studies under ``studies/``); ``report``: the demo's figures and report.
"""
