"""The floor under every stage: what models, export, calibration, engines, the runtime, training,
evaluation and serving all share, so none of them imports another for it.

* ``contract``: the preprocessing contract (how pixels become a network's input), ``preprocess``
  its one implementation, ``metadata`` every key a model file carries and the one reader and
  writer of each place they live (safetensors headers, ONNX ``metadata_props``, engine manifests);
* ``image_io``: decoding user images (``examples``: the bundled photo);
* ``detections``: the detections type, ``boxes``: NMS, box IoU, candidate merging and packing;
* ``onnxinfo``: facts about an ONNX file (signature, precision, dynamic dims), ``precision`` the
  names of a model's fp16/int8 variants, ``sizes`` the input sizes the runtime feeds a detector;
* ``fsutil``: atomic output (files, line-by-line text files, folders); ``errors``: the errors
  users see and their exit codes; ``env``: what the running environment offers (optional
  imports, PyTorch, a CUDA driver and GPU, the cache folder).

Nothing here imports another rfdeploy stage, torch or onnx at import time.
"""
