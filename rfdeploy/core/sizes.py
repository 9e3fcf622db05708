"""The input sizes the runtime feeds a detector: the tiling policy (rfdeploy.runtime.tiling) cuts
images to them, and the engine profile built for a detector (rfdeploy.engines.default_profile)
admits exactly them, so an engine built without a profile takes every input ``infer`` makes.
"""

MIN_TILE = 64  # the smallest tile, and the smallest input the pipeline pads up to
DEFAULT_AUTO_TILE = 1024  # --tile auto: the tile size for images too large to run whole (8 such tiles batch well)
DEFAULT_AUTO_MAX_INPUT = 2048  # --tile auto: images whose long side fits run whole
DEFAULT_TILE_BATCH = 8  # tiles per detector call
# Runners that take any shape (onnxruntime, torch) tile with the largest untiled input and feed
# at most this many pixels per call: fewer overlapping pixels, and on a CPU one large tile per call
# ran an 8K image 21% faster than batches of eight 1024-px tiles (docs/benchmarks.md, "8K, CPU")
HOST_AUTO_TILE = DEFAULT_AUTO_MAX_INPUT
HOST_BATCH_PIXELS = 2048 * 2048
OPT_TILE_BATCH = 4  # the batch an engine's kernels are tuned for
