"""TrtRunner's input limits read the manifest in one order, (height, width), for both ends (they
once disagreed: max as (h, w), min as (w, h)). Reads the manifest only; no engine runs."""

from types import SimpleNamespace

from rfdeploy.runtime.backends.trt_runner import TrtRunner


def _runner_with_profiles(*ranges):
    r = TrtRunner.__new__(TrtRunner)  # no engine file: only the manifest's profiles matter here
    r.manifest = SimpleNamespace(profiles=[
        SimpleNamespace(shapes={"image": SimpleNamespace(min=lo, opt=hi, max=hi)}) for lo, hi in ranges
    ])
    return r


def test_min_and_max_input_are_both_height_then_width():
    r = _runner_with_profiles(((1, 3, 64, 128), (8, 3, 1024, 2048)))
    assert r.max_input() == (1024, 2048)
    assert r.min_input() == (64, 128)


def test_limits_span_several_profiles():
    r = _runner_with_profiles(((1, 3, 32, 96), (1, 3, 640, 480)), ((1, 3, 256, 128), (4, 3, 2048, 1536)))
    assert r.max_input() == (2048, 1536)
    assert r.min_input() == (32, 96)
