"""Bounds on every number a manifest or a config states, and the schema rules for the model entries that
the manifest and the conditioning kinds share.

The bounds are far above any released model (the largest taming model: vocab 16384, 16x16 grids, block 512;
LlamaGen: vocab 16384, 24x24 grids) and keep every size computed from them in int64 and in memory.
"""

from __future__ import annotations

from vqdeploy.schema import integer, list_of

MAX_VOCAB = 1 << 24  # as the loader (loading/sizes.py): whatever loads, exports and reads back
MAX_BLOCK = 1 << 16  # transformer positions (and so image tokens)
MAX_GRID = 1024  # latent cells per side
MAX_RESOLUTION = 16384  # pixels per side of the trained image
MAX_FACTOR = 1024  # downsampling factor
MAX_CHANNELS = 1024
MAX_LAYERS = 1024
MAX_HEADS = 1024
MAX_HEAD_DIM = 8192
MAX_BATCH = 1024
MAX_DIM = 1 << 20  # any extent or dim range in a graph
MAX_RANK = 8
MAX_GRAPHS = 32
MAX_TENSORS = 2 * MAX_LAYERS + 8
PRECISIONS = ("fp32", "fp16", "bf16")
QUANTIZATION_SCHEMES = ("int8", "int4")  # export --quantize (weight-only, transformer graph)
MAX_QUANT_BLOCK = 1 << 16
DTYPES = ("float32", "float16", "bfloat16", "int64")  # what the runtimes bind

GRID = list_of(integer(1, MAX_GRID), 2, 2)
VQ = {"in_channels": integer(1, MAX_CHANNELS), "resolution": integer(1, MAX_RESOLUTION),
      "downsample_factor": integer(1, MAX_FACTOR), "latent_grid": GRID, "vocab_size": integer(1, MAX_VOCAB)}
TOKENS = integer(1, MAX_BLOCK)
