"""TensorRT engines: build (build.py), describe (manifest.py, inspect.py) and run (runner.py).

TensorRT and TensorRT-RTX are imported only inside functions; importing this package needs neither.
"""
