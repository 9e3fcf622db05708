"""The CPU repository's files and logic without a server: configs in Triton's schema with the same
tensors and batching as the GPU repository, the stub's Python paths, the network model's batching
of grouped requests (against the stand-in ``triton_python_backend_utils`` of test_triton.py, whose
calls here run the real ONNX files with rfdeploy's onnxruntime runner)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from rfdeploy.core.errors import InputError
from tests.deploy.conftest import TINY_K, TINY_N
from tests.deploy.test_triton import _fake_pb_utils, _parse
from tests.deploy.triton_fixtures import fake_server_env  # noqa: F401  (fixture)


@pytest.fixture
def cpu_repo(tiny_onnx, tmp_path, fake_server_env):  # noqa: F811
    from rfdeploy.deploy.triton import write_triton_repo

    return write_triton_repo(tmp_path / "repo", tiny_onnx["detector"], tiny_onnx["ranker"], cpu=True,
                             server_env=fake_server_env, max_batch=4, instances=2, python_instances=3)


def test_cpu_configs_parse_and_serve_the_onnx_signatures(cpu_repo, tiny_onnx, fake_server_env):  # noqa: F811
    # the tiny detector's ONNX signature leaves its top-K size to the graph (-1); the ranker's N is fixed
    for kind, dims in (("detector", {"image": (3, -1, -1), "boxes": (-1, 4), "scores": (-1,)}),
                       ("ranker", {"image": (3, -1, -1), "boxes": (TINY_N, 5), "scores": (TINY_N,)})):
        cfg, pb2 = _parse(cpu_repo.models[f"rfdeploy_{kind}"])
        assert cfg.backend == "python" and not cfg.platform
        assert cfg.max_batch_size == 4 and cfg.HasField("dynamic_batching")
        assert {t.name: tuple(t.dims) for t in [*cfg.input, *cfg.output]} == dims
        assert all(pb2.DataType.Name(t.data_type) == "TYPE_FP32" for t in [*cfg.input, *cfg.output])
        assert [(g.kind, g.count) for g in cfg.instance_group] == [(pb2.ModelInstanceGroup.KIND_CPU, 2)]
        version = cpu_repo.path / f"rfdeploy_{kind}" / "1"
        assert (version / "model.onnx").read_bytes() == tiny_onnx[kind].read_bytes()
        assert sorted(p.name for p in version.iterdir()) == [
            "model.onnx", "model.py", "network.json", "python_env.json", "rfdeploy_env.py"]
    env = json.loads((cpu_repo.path / "rfdeploy_faces" / "1" / "python_env.json").read_text())
    site = fake_server_env.resolve() / "lib" / "python3.11" / "site-packages"
    assert env["numpy_site"] == str(site) and env["python"] == list(sys.version_info[:2])
    import onnxruntime

    # the environment rfdeploy and onnxruntime are imported from is on the stub's path
    assert any(Path(onnxruntime.__file__).resolve().is_relative_to(Path(p).resolve()) for p in env["site_packages"])


def test_cpu_and_gpu_repositories_describe_the_networks_alike(cpu_repo, tiny_engines, tmp_path):
    from rfdeploy.deploy.triton import write_triton_repo

    gpu = write_triton_repo(tmp_path / "gpu", tiny_engines["detector"], tiny_engines["ranker"], max_batch=2)
    for kind in ("detector", "ranker"):
        c, _ = _parse(cpu_repo.models[f"rfdeploy_{kind}"])
        g, _ = _parse(gpu.models[f"rfdeploy_{kind}"])
        for cpu_side, gpu_side in ((c.input, g.input), (c.output, g.output)):
            assert [(t.name, t.data_type, len(t.dims)) for t in cpu_side] == [(t.name, t.data_type, len(t.dims)) for t in gpu_side]
            # dims agree where the ONNX signature states them (the engine knows every output size)
            for tc, tg in zip(cpu_side, gpu_side):
                assert all(a in (b, -1) for a, b in zip(tc.dims, tg.dims)), (tc, tg)
    faces_cpu = json.loads((cpu_repo.path / "rfdeploy_faces" / "1" / "faces.json").read_text())
    faces_gpu = json.loads((gpu.path / "rfdeploy_faces" / "1" / "faces.json").read_text())
    assert faces_cpu["detector"] == faces_gpu["detector"] and faces_cpu["ranker"] == faces_gpu["ranker"]


def test_server_environment_is_checked_before_anything_is_written(tiny_onnx, tmp_path, fake_server_env):  # noqa: F811
    from rfdeploy.deploy.triton import write_triton_repo

    with pytest.raises(InputError, match="no nvidia-pytriton"):
        write_triton_repo(tmp_path / "r1", tiny_onnx["detector"], cpu=True, server_env=tmp_path)
    meta = next(fake_server_env.rglob("numpy-*.dist-info")) / "METADATA"
    kept = meta.read_text()
    meta.write_text("Name: numpy\nVersion: 2.1.0\n")
    with pytest.raises(InputError, match="numpy < 2"):
        write_triton_repo(tmp_path / "r2", tiny_onnx["detector"], cpu=True, server_env=fake_server_env)
    meta.write_text(kept)
    import numpy

    if int(numpy.__version__.split(".")[0]) >= 2:  # this environment's numpy cannot serve the stub
        with pytest.raises(InputError, match="--server-env"):
            write_triton_repo(tmp_path / "r3", tiny_onnx["detector"], cpu=True)
    with pytest.raises(InputError, match="--cpu"):
        write_triton_repo(tmp_path / "r4", tiny_onnx["detector"], server_env=fake_server_env)
    text = tmp_path / "detector.txt"
    text.write_text("not a model")
    with pytest.raises(InputError, match="CPU repository serves ONNX"):
        write_triton_repo(tmp_path / "r5", text, cpu=True, server_env=fake_server_env)
    text.unlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["server-env"]


def test_stub_paths_take_only_numpy_from_the_server_environment(tmp_path):
    """rfdeploy_env.py in a fresh interpreter: numpy from the named folder, every other package
    from the listed site-packages (ahead of what was on the path before)."""
    from importlib import resources

    server = tmp_path / "server-site"
    for pkg, text in (("numpy", "__version__ = 'from-server'\n"), ("shadowed", "WHERE = 'server'\n")):
        (server / pkg).mkdir(parents=True)
        (server / pkg / "__init__.py").write_text(text)
    env_site = tmp_path / "env-site"
    (env_site / "shadowed").mkdir(parents=True)
    (env_site / "shadowed" / "__init__.py").write_text("WHERE = 'env'\n")
    (env_site / "extra.pth").write_text(str(tmp_path / "from-pth") + "\n")  # .pth files take effect
    (tmp_path / "from-pth").mkdir()
    (tmp_path / "from-pth" / "viapth.py").write_text("OK = True\n")
    model = tmp_path / "model" / "1"
    model.mkdir(parents=True)
    (model / "rfdeploy_env.py").write_text(resources.files("rfdeploy.deploy").joinpath("triton_env.py").read_text())
    (model / "python_env.json").write_text(json.dumps(
        {"python": list(sys.version_info[:2]), "site_packages": [str(env_site)], "numpy_site": str(server)}))
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import rfdeploy_env, numpy, shadowed, viapth; "
            "print(numpy.__version__, shadowed.WHERE, viapth.OK)")
    out = subprocess.run([sys.executable, "-S", "-c", code, str(model)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["from-server", "env", "True"]

    (model / "python_env.json").write_text(json.dumps({"python": [2, 7], "site_packages": []}))
    out = subprocess.run([sys.executable, "-S", "-c", code, str(model)], capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "Python 2.7" in out.stderr


# --- the network model against the stand-in triton_python_backend_utils --------------------------


@pytest.fixture
def detector_model(cpu_repo, monkeypatch):
    pb = _fake_pb_utils({}, [])
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", pb)
    version = cpu_repo.path / "rfdeploy_detector" / "1"
    # rfdeploy_env would apply python_env.json (the fake server's numpy): stand in an empty module
    monkeypatch.setitem(sys.modules, "rfdeploy_env", types.ModuleType("rfdeploy_env"))
    spec = importlib.util.spec_from_file_location("rfdeploy_detector_model", version / "model.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    model = mod.TritonPythonModel()
    model.initialize({"model_repository": str(version.parent), "model_version": "1"})
    return model, pb


def test_network_model_batches_grouped_requests_and_fails_them_alone(detector_model, tiny_onnx):
    from rfdeploy.runtime.backends.ort_runner import OrtRunner

    model, pb = detector_model
    rng = np.random.default_rng(0)
    a, b = (rng.normal(size=(n, 3, 64, 96)).astype(np.float32) for n in (2, 1))
    c = rng.normal(size=(1, 3, 128, 64)).astype(np.float32)  # another shape: its own call
    bad = rng.normal(size=(1, 3, 64)).astype(np.float32)  # wrong rank: onnxruntime refuses it
    calls = []
    run = model.runner.infer
    model.runner.infer = lambda feeds: calls.append(feeds["image"].shape) or run(feeds)
    requests = [types.SimpleNamespace(inputs=[pb.Tensor("image", x)]) for x in (a, c, b, bad)]
    responses = model.execute(requests)
    assert sorted(calls) == sorted([(3, 3, 64, 96), (1, 3, 128, 64), (1, 3, 64)])  # a and b stacked
    assert responses[3].has_error() and not any(r.has_error() for r in responses[:3])
    ref = OrtRunner(tiny_onnx["detector"]).activate()
    for x, r in zip((a, c, b), responses[:3]):
        want = ref.infer({"image": x})
        got = {t.name(): t.as_numpy() for t in r.output_tensors}
        assert got["boxes"].shape == (x.shape[0], TINY_K, 4)
        np.testing.assert_allclose(got["boxes"], want["boxes"], rtol=1e-5, atol=1e-4)
        np.testing.assert_allclose(got["scores"], want["scores"], rtol=1e-5, atol=1e-6)


def test_launcher_finds_the_server_pieces_and_says_what_is_missing(tmp_path, fake_server_env):  # noqa: F811
    from rfdeploy.core.errors import BackendUnavailableError
    from rfdeploy.deploy.triton_server import ServerInstall, TritonServer, repo_python

    with pytest.raises(InputError, match="nvidia-pytriton"):
        ServerInstall(tmp_path / "nowhere")
    install = ServerInstall(fake_server_env)
    with pytest.raises(BackendUnavailableError, match="no Python stub for Python 3.11"):
        install.stub((3, 11))
    (install.stubs / "3.11").mkdir(parents=True)
    (install.stubs / "3.11" / "triton_python_backend_stub").write_bytes(b"")
    install.python_backend.mkdir(parents=True)
    for f in ("libtriton_python.so", "triton_python_backend_utils.py"):
        (install.python_backend / f).write_bytes(b"")
    backends = install.backend_dir(tmp_path / "backends", (3, 11))
    assert sorted(p.name for p in (backends / "python").iterdir()) == [
        "libtriton_python.so", "triton_python_backend_stub", "triton_python_backend_utils.py"]
    repo = tmp_path / "repo"
    (repo / "m" / "1").mkdir(parents=True)
    (repo / "m" / "1" / "python_env.json").write_text(json.dumps({"python": [3, 12]}))
    assert repo_python(repo) == (3, 12)
    server = TritonServer(repo, fake_server_env, http_port=18123, grpc_port=18124)
    cmd = server.command(backends)
    # loopback only, metrics off
    assert cmd[cmd.index("--http-address") + 1] == cmd[cmd.index("--grpc-address") + 1] == "127.0.0.1"
    assert "--allow-metrics=false" in cmd and server.http_url == "127.0.0.1:18123"


def test_cli_writes_a_cpu_repository_and_refuses_a_gpu_one_without_engine(tiny_onnx, tmp_path, fake_server_env):  # noqa: F811
    from click.testing import CliRunner

    from rfdeploy.cli import main

    runner = CliRunner()
    res = runner.invoke(main, ["triton-repo", str(tmp_path / "repo"), str(tiny_onnx["detector"]), "--ranker",
                               str(tiny_onnx["ranker"]), "--cpu", "--server-env", str(fake_server_env), "--tile", "AUTO"])
    assert res.exit_code == 0, res.output
    assert "rfdeploy_detector, rfdeploy_faces, rfdeploy_ranker" in res.output
    faces = json.loads((tmp_path / "repo" / "rfdeploy_faces" / "1" / "faces.json").read_text())
    assert faces["facelogic"]["tile"] == "auto" and faces["ranker"]["model"] == "rfdeploy_ranker"
    res = runner.invoke(main, ["triton-repo", str(tmp_path / "gpu")])
    assert res.exit_code == 2 and "needs the detector engine" in res.output
    res = runner.invoke(main, ["triton-repo", str(tmp_path / "bad"), str(tiny_onnx["detector"]), "--cpu",
                               "--server-env", str(fake_server_env), "--no-ranker", "--tile", "12"])
    assert res.exit_code == 2 and ">= 64" in res.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["repo", "server-env"]


def test_cpu_repository_of_the_bundled_models_serves_their_shipped_onnx(tmp_path, fake_server_env, monkeypatch):  # noqa: F811
    # the ONNX files shipped beside the bundled checkpoints are served as they are: nothing is exported
    from rfdeploy.deploy.triton import write_triton_repo
    from rfdeploy.models import DEFAULT_DETECTOR_ONNX, DEFAULT_RANKER_ONNX

    monkeypatch.setenv("RFDEPLOY_CACHE", str(tmp_path / "cache"))
    repo = write_triton_repo(tmp_path / "repo", cpu=True, use_ranker=True, server_env=fake_server_env)
    for name, shipped in (("rfdeploy_detector", DEFAULT_DETECTOR_ONNX), ("rfdeploy_ranker", DEFAULT_RANKER_ONNX)):
        assert (repo.path / name / "1" / "model.onnx").read_bytes() == shipped.read_bytes()
    assert not (tmp_path / "cache").exists()
