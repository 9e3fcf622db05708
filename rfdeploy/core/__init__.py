"""The floor under every stage: what models, export, calibration, engines, the runtime, training,
evaluation and serving all share, so none of them imports another for it.

* ``contract``: the preprocessing contract (how pixels become a network's input), ``preprocess``
  its one implementation;
* ``image_io``: decoding user images (``examples``: the bundled photo);
* ``detections``: the detections type, ``boxes``: NMS, box IoU, candidate merging and packing;
* ``onnxinfo``: facts about an ONNX file (signature, precision, dynamic dims);
* ``fsutil``: atomic output; ``errors``: the errors users see and their exit codes; ``env``: what
  the running environment offers.

Nothing here imports another rfdeploy stage, torch or onnx at import time.
"""
