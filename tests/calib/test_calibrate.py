"""INT8 Q/DQ calibration: TensorRT-compatible graph, accuracy, metadata, cache keying, errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper
from shared_data import SHARED_DATA  # noqa: E402

from rfdeploy.calib import calibrate
from rfdeploy.calib.calibrate import prepare_image
from rfdeploy.calib.images import load_rgb
from rfdeploy.calib.qdq import qdq_problems
from rfdeploy.core.contract import PreprocessContract
from rfdeploy.core.errors import InputError, ModelFileError
from rfdeploy.core.metadata import CONTRACT as METADATA_KEY
from rfdeploy.export.graph_regions import ensure_node_names, find_fp32_region
from tests.precision_fixtures import CONTRACT, export_toy_detector, export_toy_ranker, write_images

BACKGROUNDS = (SHARED_DATA or Path("/nonexistent")) / "backgrounds"
FAST = dict(calib_size=128)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("calib")
    imgs = d / "images"
    write_images(imgs, 6)
    det = export_toy_detector(d / "det.onnx")
    det_all = export_toy_detector(d / "det_all.onnx", topk=False)
    rank = export_toy_ranker(d / "rank.onnx")
    reports = {
        "det": calibrate(det, imgs, d / "det_int8.onnx", num=6, **FAST),
        "det_all": calibrate(det_all, imgs, d / "det_all_int8.onnx", num=6, **FAST),
        "rank": calibrate(rank, imgs, d / "rank_int8.onnx", num=6, **FAST),
    }
    return {"dir": d, "images": imgs, "det": det, "det_all": det_all, "rank": rank, "reports": reports}


def _consts(m: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}


def _region(path: Path) -> frozenset[str]:
    m = onnx.load(str(path))
    ensure_node_names(m)
    return find_fp32_region(m).nodes


def test_qdq_graph_is_what_tensorrt_accepts(setup):
    m = onnx.load(str(setup["reports"]["det"].dst))
    consts = _consts(m)
    q = [n for n in m.graph.node if n.op_type == "QuantizeLinear"]
    dq = [n for n in m.graph.node if n.op_type == "DequantizeLinear"]
    assert q and dq
    for n in q + dq:
        zp = consts[n.input[2]]
        assert zp.dtype == np.int8 and not zp.any(), n.name  # symmetric: zero-point 0 everywhere
    for n in dq:
        if n.input[0] in consts:  # stored weights are int8; no int32 bias DQ
            assert consts[n.input[0]].dtype == np.int8, n.name
    producer = {t: n for n in m.graph.node for t in n.output}
    convs = [n for n in m.graph.node if n.op_type == "Conv"]
    assert len(convs) == 12
    for c in convs:
        w_dq = producer[c.input[1]]
        assert w_dq.op_type == "DequantizeLinear"
        scale = consts[w_dq.input[1]]
        assert scale.shape == (consts[w_dq.input[0]].shape[0],)  # per output channel
        assert producer[c.input[0]].op_type == "DequantizeLinear"
        assert len(c.input) < 3 or c.input[2] in consts and consts[c.input[2]].dtype == np.float32
    for n in m.graph.node:
        if n.op_type in ("Sigmoid", "Exp", "TopK"):
            assert all(producer.get(t) is None or producer[t].op_type != "DequantizeLinear" for t in n.input)
    assert qdq_problems(m, _region(setup["det"])) == []
    assert setup["reports"]["det"].quantized_nodes == 12
    # Q/DQ sit on the inputs of Convs only: no Conv output (a pre-activation) is rounded
    conv_outputs = {c.output[0] for c in convs}
    assert not [n.name for n in q if n.input[0] in conv_outputs]


def test_qdq_problems_detects_what_tensorrt_refuses(setup):
    m = onnx.load(str(setup["reports"]["det"].dst))
    zp = next(i for i in m.graph.initializer if numpy_helper.to_array(i).dtype == np.int8 and i.dims == [])
    zp.CopyFrom(numpy_helper.from_array(np.array(3, np.int8), zp.name))
    assert any("non-zero zero-point" in p for p in qdq_problems(m))


def test_metadata_is_kept_and_extended(setup):
    r = setup["reports"]["det"]
    src = {p.key: p.value for p in onnx.load(str(setup["det"])).metadata_props}
    dst = {p.key: p.value for p in onnx.load(str(r.dst)).metadata_props}
    assert {k: dst[k] for k in src} == src
    assert dst["rfdeploy.precision"] == "int8"
    assert dst["rfdeploy.calibration.method"] == "max"
    assert dst["rfdeploy.int8.target"] == "tensorrt"
    assert dst["rfdeploy.calibration.key"] == r.cache_key
    assert dst[METADATA_KEY] == CONTRACT.to_json()


def test_int8_agrees_with_fp32(setup):
    x = np.concatenate([prepare_image(p, CONTRACT, 128)[0] for p in sorted(setup["images"].iterdir())[:2]])
    ref = ort.InferenceSession(str(setup["det_all"])).run(None, {"image": x})
    got = ort.InferenceSession(setup["reports"]["det_all"].dst).run(None, {"image": x})
    box_rel = float(np.abs(ref[0] - got[0]).max() / np.abs(ref[0]).max())
    score_err = float(np.abs(ref[1] - got[1]).max())
    corr = float(np.corrcoef(ref[1].ravel(), got[1].ravel())[0, 1])
    print(f"int8 boxes max rel error {box_rel:.2e}, scores max abs error {score_err:.3f}, corr {corr:.3f}")
    assert box_rel < 1e-2 and score_err < 0.06 and corr > 0.9
    # the TopK model runs too and keeps its output contract
    topk = ort.InferenceSession(setup["reports"]["det"].dst).run(None, {"image": x})
    assert topk[0].dtype == np.float32 and topk[0].shape[:2] == topk[1].shape


def test_ranker_int8(setup):
    r = setup["reports"]["rank"]
    m = onnx.load(r.dst)
    assert r.quantized_nodes == 4  # two Conv, two MatMul
    assert qdq_problems(m, _region(setup["rank"])) == []
    rng = np.random.default_rng(0)
    x, _ = prepare_image(sorted(setup["images"].iterdir())[0], CONTRACT, 128)
    boxes = (rng.uniform(0, 1, (1, 32, 5)) * [128, 128, 128, 128, 1]).astype(np.float32)
    ref = ort.InferenceSession(str(setup["rank"])).run(None, {"image": x, "boxes": boxes})[0]
    got = ort.InferenceSession(r.dst).run(None, {"image": x, "boxes": boxes})[0]
    assert np.abs(ref - got).max() < 0.02


def test_cache_hit_reuses_ranges_and_key_tracks_every_input(setup, tmp_path):
    imgs = tmp_path / "imgs"
    shutil.copytree(setup["images"], imgs)
    cache = tmp_path / "cache"
    det = setup["det"]
    first = calibrate(det, imgs, tmp_path / "a.onnx", num=4, cache_dir=cache, **FAST)
    assert not first.cache_hit and Path(first.cache_file).is_file()
    assert first.cache_key in Path(first.cache_file).name
    second = calibrate(det, imgs, tmp_path / "b.onnx", num=4, cache_dir=cache, **FAST)
    assert second.cache_hit and second.cache_key == first.cache_key
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()

    keys = {first.cache_key}
    for kwargs in ({"method": "percentile"}, {"num": 3}, {"calib_size": 96}):
        r = calibrate(det, imgs, tmp_path / "c.onnx", cache_dir=cache, **{"num": 4, **FAST, **kwargs})
        assert not r.cache_hit
        keys.add(r.cache_key)
    other_model = export_toy_detector(tmp_path / "other.onnx", seed=1)
    keys.add(calibrate(other_model, imgs, tmp_path / "c.onnx", num=4, cache_dir=cache, **FAST).cache_key)
    # same weights, different preprocessing contract
    m = onnx.load(str(det))
    for p in m.metadata_props:
        if p.key == METADATA_KEY:
            p.value = PreprocessContract(mean=(0.0, 0.0, 0.0), std=(255.0, 255.0, 255.0)).to_json()
    onnx.save(m, str(tmp_path / "other_contract.onnx"))
    keys.add(calibrate(tmp_path / "other_contract.onnx", imgs, tmp_path / "c.onnx", num=4, cache_dir=cache, **FAST).cache_key)
    # same file names, one image's pixels changed
    used = sorted(imgs.iterdir())[0]
    arr = load_rgb(used)
    from PIL import Image

    Image.fromarray(255 - arr).save(used)
    changed = calibrate(det, imgs, tmp_path / "c.onnx", num=4, cache_dir=cache, **FAST)
    assert not changed.cache_hit
    keys.add(changed.cache_key)
    assert len(keys) == 7


def test_cache_hit_really_uses_the_stored_ranges(setup, tmp_path):
    cache = tmp_path / "cache"
    r = calibrate(setup["det"], setup["images"], tmp_path / "a.onnx", num=4, cache_dir=cache, **FAST)
    path = Path(r.cache_file)
    data = json.loads(path.read_text())
    for name, (lo, hi) in data["ranges"].items():  # widen every range: the activation scales must follow
        data["ranges"][name] = [lo * 4, hi * 4]
    path.write_text(json.dumps(data))
    r2 = calibrate(setup["det"], setup["images"], tmp_path / "b.onnx", num=4, cache_dir=cache, **FAST)
    assert r2.cache_hit

    def act_scales(p):
        m = onnx.load(str(p))
        c = _consts(m)
        return sorted(float(c[n.input[1]]) for n in m.graph.node if n.op_type == "QuantizeLinear")

    np.testing.assert_allclose(act_scales(tmp_path / "b.onnx"), np.array(act_scales(tmp_path / "a.onnx")) * 4, rtol=1e-5)


def test_stale_cache_is_never_reused(setup, tmp_path):
    cache = tmp_path / "cache"
    r = calibrate(setup["det"], setup["images"], tmp_path / "a.onnx", num=4, cache_dir=cache, **FAST)
    path = Path(r.cache_file)
    good = path.read_text()
    # a file under the right name whose recorded key parts differ (e.g. copied from another setup)
    data = json.loads(good)
    data["key_parts"]["num"] = 5
    path.write_text(json.dumps(data))
    r2 = calibrate(setup["det"], setup["images"], tmp_path / "b.onnx", num=4, cache_dir=cache, **FAST)
    assert not r2.cache_hit and any("does not match" in w for w in r2.warnings)
    assert json.loads(path.read_text())["key_parts"]["num"] == 4  # rewritten with the true key
    path.write_text("{ truncated")
    r3 = calibrate(setup["det"], setup["images"], tmp_path / "c.onnx", num=4, cache_dir=cache, **FAST)
    assert not r3.cache_hit and any("unreadable" in w for w in r3.warnings)


def test_image_errors(setup, tmp_path):
    det, dst = setup["det"], tmp_path / "out.onnx"
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="no image or video files"):
        calibrate(det, empty, dst, num=2)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "a.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(InputError, match="no readable"):
        calibrate(det, broken, dst, num=2)
    with pytest.raises(InputError, match="only 6 readable"):
        calibrate(det, setup["images"], dst, num=10, **FAST)
    with pytest.raises(InputError, match="not found"):
        calibrate(det, [setup["images"] / "img000.jpg", tmp_path / "gone.jpg"], dst, num=2)
    with pytest.raises(InputError, match="not found"):
        calibrate(det, tmp_path / "no_dir", dst, num=2)
    assert not dst.exists()
    shutil.copy(setup["images"] / "img000.jpg", broken / "b.jpg")
    r = calibrate(det, broken, dst, num=3, allow_fewer=True, **FAST)
    assert r.num_used == 1 and r.images == ["b.jpg"]
    assert any("only 1 readable" in w for w in r.warnings) and any("a.jpg" in w for w in r.warnings)
    assert dst.is_file()


def test_model_errors(setup, tmp_path):
    dst = tmp_path / "out.onnx"
    with pytest.raises(InputError):
        calibrate(tmp_path / "missing.onnx", setup["images"], dst, num=2)
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00garbage")
    with pytest.raises(ModelFileError):
        calibrate(junk, setup["images"], dst, num=2)
    m = onnx.load(str(setup["det"]))
    del m.metadata_props[:]
    onnx.save(m, str(tmp_path / "nocontract.onnx"))
    with pytest.raises(ModelFileError, match="contract"):
        calibrate(tmp_path / "nocontract.onnx", setup["images"], dst, num=2)
    with pytest.raises(ModelFileError, match="already"):
        calibrate(setup["reports"]["det"].dst, setup["images"], dst, num=2)
    with pytest.raises(ValueError):
        calibrate(setup["det"], setup["images"], dst, num=2, method="mse")
    assert not dst.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_failed_quantization_keeps_previous_output(setup, tmp_path):
    dst = tmp_path / "out.onnx"
    dst.write_bytes(b"previous")

    def bad_boxes(x, lb):
        raise RuntimeError("boxes source failed")

    from rfdeploy.core.errors import BuildError

    with pytest.raises(BuildError, match="boxes source failed"):
        calibrate(setup["rank"], setup["images"], dst, num=2, boxes_fn=bad_boxes, **FAST)
    assert dst.read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.onnx"]


def test_exif_orientation_is_applied(tmp_path):
    from PIL import Image

    img = Image.fromarray(np.zeros((20, 40, 3), np.uint8))
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    img.save(tmp_path / "rot.jpg", exif=exif)
    assert load_rgb(tmp_path / "rot.jpg").shape == (40, 20, 3)


def test_calibration_on_real_backgrounds(setup, tmp_path):
    if not BACKGROUNDS.is_dir():
        pytest.skip(f"{BACKGROUNDS} is not present (shared development data)")
    r = calibrate(setup["det"], BACKGROUNDS, tmp_path / "bg.onnx", num=3, calib_size=256)
    assert r.num_used == 3 and r.calib_shape == (256, 256)
    m = onnx.load(r.dst)
    assert qdq_problems(m, _region(setup["det"])) == []
    x, _ = prepare_image(BACKGROUNDS / r.images[0], CONTRACT, 256)
    out = ort.InferenceSession(r.dst).run(None, {"image": x})
    assert np.isfinite(out[0]).all() and np.isfinite(out[1]).all()


@pytest.mark.parametrize("name", ["det", "rank"])
def test_int8_builds_with_tensorrt_rtx(setup, name):
    from tests.precision_fixtures import build_with_tensorrt_rtx

    assert build_with_tensorrt_rtx(setup["reports"][name].dst) > 0


# ---------------------------------------------------------------- targets, float nodes, memory, video


@pytest.fixture(scope="module")
def cpu_int8(setup):
    d = setup["dir"]
    return {
        "det_all": calibrate(setup["det_all"], setup["images"], d / "det_all_cpu.onnx", num=6, target="cpu", **FAST),
        "rank": calibrate(setup["rank"], setup["images"], d / "rank_cpu.onnx", num=6, target="cpu", **FAST),
    }


def test_cpu_target_uses_onnxruntimes_integer_operators(setup, cpu_int8):
    r = cpu_int8["det_all"]
    m = onnx.load(r.dst)
    ops = {n.op_type for n in m.graph.node}
    assert "QLinearConv" in ops and "QuantizeLinear" in ops
    consts = _consts(m)
    producer = {t: n for n in m.graph.node for t in n.output}
    for n in m.graph.node:
        if n.op_type == "QLinearConv":
            assert consts[n.input[2]].dtype == np.uint8  # unsigned activations
            assert consts[n.input[3]].dtype == np.int8 and consts[n.input[4]].shape[0] > 1  # int8 per-channel
            assert not consts[n.input[5]].any()  # symmetric weights
        if n.op_type in ("Sigmoid", "Exp"):  # the decode reads float
            assert all(producer.get(t) is None or producer[t].op_type not in ("QLinearConv", "QuantizeLinear")
                       for t in n.input)
    # the convs that produce logits and box deltas stay float
    floats = [n for n in m.graph.node if n.op_type == "Conv"]
    assert len(floats) == 6 and sum(n.op_type == "QLinearConv" for n in m.graph.node) == 6  # 2 levels x 3
    meta = {p.key: p.value for p in m.metadata_props}
    assert meta["rfdeploy.int8.target"] == "cpu" and meta["rfdeploy.precision"] == "int8"


def test_cpu_target_agrees_with_fp32(setup, cpu_int8):
    x = np.concatenate([prepare_image(p, CONTRACT, 128)[0] for p in sorted(setup["images"].iterdir())[:2]])
    ref = ort.InferenceSession(str(setup["det_all"])).run(None, {"image": x})
    got = ort.InferenceSession(cpu_int8["det_all"].dst).run(None, {"image": x})
    box_rel = float(np.abs(ref[0] - got[0]).max() / np.abs(ref[0]).max())
    corr = float(np.corrcoef(ref[1].ravel(), got[1].ravel())[0, 1])
    assert box_rel < 1e-2 and float(np.abs(ref[1] - got[1]).max()) < 0.06 and corr > 0.9
    rng = np.random.default_rng(0)
    boxes = (rng.uniform(0, 1, (1, 32, 5)) * [128, 128, 128, 128, 1]).astype(np.float32)
    feed = {"image": x[:1], "boxes": boxes}
    ref = ort.InferenceSession(str(setup["rank"])).run(None, feed)[0]
    got = ort.InferenceSession(cpu_int8["rank"].dst).run(None, feed)[0]
    assert np.abs(ref - got).max() < 0.02


def test_keep_float_nodes_stay_float(setup, tmp_path):
    m = onnx.load(str(setup["det"]))
    ensure_node_names(m)
    first_conv = next(n.name for n in m.graph.node if n.op_type == "Conv")
    r = calibrate(setup["det"], setup["images"], tmp_path / "k.onnx", num=3, keep_float=[first_conv], **FAST)
    q = onnx.load(r.dst)
    producer = {t: n for n in q.graph.node for t in n.output}
    node = next(n for n in q.graph.node if n.name == first_conv)
    assert all(producer.get(t) is None or producer[t].op_type != "DequantizeLinear" for t in node.input)
    assert r.quantized_nodes == 11 and r.kept_float == [first_conv]
    meta = {p.key: p.value for p in q.metadata_props}
    assert json.loads(meta["rfdeploy.int8.float_nodes"]) == [first_conv]
    with pytest.raises(InputError, match="keep_float"):
        calibrate(setup["det"], setup["images"], tmp_path / "k2.onnx", num=3, keep_float=["nope"], **FAST)


def test_memory_is_estimated_and_refused_up_front(setup, tmp_path):
    dst = tmp_path / "m.onnx"
    with pytest.raises(InputError, match="would need about") as e:
        calibrate(setup["det"], setup["images"], dst, num=3, method="percentile", max_memory="1M", **FAST)
    assert e.value.exit_code == 2 and "--batch-size" in str(e.value)
    assert not dst.exists()
    r = calibrate(setup["det"], setup["images"], dst, num=3, method="entropy", max_memory="16G", batch_size=2, **FAST)
    assert dst.is_file() and 0 < r.memory_estimate_bytes < 16 << 30
    from rfdeploy.calib import collect
    from rfdeploy.calib.calibrate import estimate_memory, prepare

    ctx = prepare(setup["det"], calib_size=128)
    tensors = ctx.tensors()
    sess = collect._session(collect.augmented_model(ctx.model, tensors))
    one, two = (estimate_memory(ctx, sess, b, len(tensors), "entropy", None) for b in (1, 2))
    assert two.batch_bytes == 2 * one.batch_bytes > 0  # memory follows the batch, not the image count
    assert one.state_bytes == len(tensors) * 2 * collect.DEFAULT_BINS * 8
    assert estimate_memory(ctx, sess, 1, len(tensors), "max", None).state_bytes == 0
    with pytest.raises(InputError, match="memory size"):
        calibrate(setup["det"], setup["images"], dst, num=3, max_memory="lots", **FAST)


def test_cli_refusal_exit_code_and_cpu_target(setup, tmp_path):
    from click.testing import CliRunner

    from rfdeploy.cli import main

    out = tmp_path / "cli.onnx"
    res = CliRunner().invoke(main, ["calibrate", str(setup["det"]), "--images", str(setup["images"]), "-o", str(out),
                                    "--num", "2", "--calib-size", "128", "--method", "percentile", "--max-memory", "1M"])
    assert res.exit_code == 2 and "would need about" in res.output and not out.exists()
    res = CliRunner().invoke(main, ["calibrate", str(setup["det"]), "--images", str(setup["images"]), "-o", str(out),
                                    "--num", "2", "--calib-size", "128", "--target", "cpu"])
    assert res.exit_code == 0, res.output
    assert "(cpu)" in res.output and {p.key: p.value for p in onnx.load(str(out)).metadata_props}[
        "rfdeploy.int8.target"] == "cpu"
    res = CliRunner().invoke(main, ["calibrate", str(setup["det"]), "--images", str(setup["images"]), "-o", str(out),
                                    "--keep-float", "2"])
    assert res.exit_code == 2 and "--analyse" in res.output


def _write_video(path: Path, frames: int = 12) -> None:
    av = pytest.importorskip("av", reason="PyAV (the train extra) reads video frames")
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=12)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(frames):
            img = np.full((48, 64, 3), i * 20, np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def test_video_frames_are_calibration_pictures(setup, tmp_path):
    from rfdeploy.calib.images import FrameReader, list_sources

    folder = tmp_path / "mixed"
    shutil.copytree(setup["images"], folder)
    _write_video(folder / "clip.mp4")
    srcs = list_sources(folder, video_frames=4)
    frames = [s for s in srcs if s.is_video]
    assert [s.frame for s in frames] == [0, 4, 7, 11] and len(srcs) == 10
    reader = FrameReader()
    means = [reader.get(s.path, s.frame).mean() for s in frames]
    reader.close()
    assert means == sorted(means) and means[-1] - means[0] > 100  # frames i*20 grey, in order
    cache = tmp_path / "cache"
    r = calibrate(setup["det"], folder, tmp_path / "v.onnx", num=10, video_frames=4, cache_dir=cache, **FAST)
    assert r.num_used == 10 and "clip.mp4#11" in r.images
    r2 = calibrate(setup["det"], folder, tmp_path / "v2.onnx", num=10, video_frames=5, cache_dir=cache, **FAST)
    assert r2.cache_key != r.cache_key  # other frames, other ranges


def test_unshare_initializers_gives_each_conv_its_own_copy():
    from onnx import helper

    from rfdeploy.calib.qdq import unshare_initializers

    w = numpy_helper.from_array(np.ones((2, 2, 1, 1), np.float32), "w")
    b = numpy_helper.from_array(np.ones(2, np.float32), "b")
    nodes = [helper.make_node("Conv", [x, "w", "b"], [y], name=y) for x, y in (("x", "y1"), ("y1", "y2"), ("y2", "y3"))]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 2, 2, 2])],
                          [helper.make_tensor_value_info("y3", onnx.TensorProto.FLOAT, [1, 2, 2, 2])], [w, b])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    x = np.random.default_rng(0).normal(size=(1, 2, 2, 2)).astype(np.float32)
    before = ort.InferenceSession(m.SerializeToString()).run(None, {"x": x})[0]
    assert unshare_initializers(m, ("Conv",)) == 4
    assert len({n.input[1] for n in m.graph.node}) == 3 and len({n.input[2] for n in m.graph.node}) == 3
    onnx.checker.check_model(m)
    np.testing.assert_array_equal(ort.InferenceSession(m.SerializeToString()).run(None, {"x": x})[0], before)


def test_cpu_note_for_tensorrt_files_on_the_cpu():
    from rfdeploy.core.precision import int8_cpu_note as cpu_note

    trt = {"rfdeploy.precision": "int8", "rfdeploy.int8.target": "tensorrt"}
    assert "slower" in cpu_note(trt, ["CPUExecutionProvider"])
    assert "slower" in cpu_note({"rfdeploy.precision": "int8"}, ["CPUExecutionProvider"])  # files made before targets
    assert cpu_note(trt, ["TensorrtExecutionProvider", "CPUExecutionProvider"]) is None
    assert cpu_note({**trt, "rfdeploy.int8.target": "cpu"}, ["CPUExecutionProvider"]) is None
    assert cpu_note({"rfdeploy.precision": "fp32"}, ["CPUExecutionProvider"]) is None


def test_opening_a_tensorrt_int8_file_on_the_cpu_says_it_is_slow(setup, cpu_int8):
    from rfdeploy.runtime.backends.selection import open_runner

    trt_file = next(iter(setup["reports"].values())).dst
    notes: list[str] = []
    open_runner(trt_file, backend="onnxruntime", notes=notes)
    assert any("made for TensorRT" in n and "--target cpu" in n for n in notes), notes
    notes = []
    open_runner(cpu_int8["det_all"].dst, backend="onnxruntime", notes=notes)
    assert not any("made for TensorRT" in n for n in notes), notes
