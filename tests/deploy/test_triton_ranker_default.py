"""triton-repo serves what infer runs by default: the detector alone, the ranker only when asked
for (--ranker FILE, or --with-ranker for the bundled one on --cpu)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from rfdeploy.cli import main
from tests.deploy.triton_fixtures import fake_server_env  # noqa: F401  (fixture)


def _models(path):
    return sorted(p.name for p in path.iterdir())


def test_cpu_repository_without_the_ranker_by_default(tiny_onnx, tmp_path, fake_server_env):  # noqa: F811
    runner = CliRunner()
    common = [str(tiny_onnx["detector"]), "--cpu", "--server-env", str(fake_server_env)]
    res = runner.invoke(main, ["triton-repo", str(tmp_path / "plain"), *common])
    assert res.exit_code == 0, res.output
    assert _models(tmp_path / "plain") == ["rfdeploy_detector", "rfdeploy_faces"]
    faces = json.loads((tmp_path / "plain" / "rfdeploy_faces" / "1" / "faces.json").read_text())
    assert faces["ranker"] is None
    res = runner.invoke(main, ["triton-repo", str(tmp_path / "ranked"), *common, "--with-ranker"])
    assert res.exit_code == 0, res.output
    assert _models(tmp_path / "ranked") == ["rfdeploy_detector", "rfdeploy_faces", "rfdeploy_ranker"]


def test_with_ranker_needs_cpu_or_an_engine(tmp_path):
    res = CliRunner().invoke(main, ["triton-repo", str(tmp_path / "gpu"), "det.engine", "--with-ranker"])
    assert res.exit_code == 2 and "--with-ranker" in res.output and "--cpu" in res.output
    assert not (tmp_path / "gpu").exists()


def test_library_default_is_the_detector_alone_as_the_cli(tiny_onnx, tmp_path, fake_server_env):  # noqa: F811
    from rfdeploy.core.errors import InputError
    from rfdeploy.deploy.triton import write_triton_repo

    plain = write_triton_repo(tmp_path / "plain", cpu=True, server_env=fake_server_env)
    assert _models(plain.path) == ["rfdeploy_detector", "rfdeploy_faces"] and plain.settings["ranker"] is None
    given = write_triton_repo(tmp_path / "given", tiny_onnx["detector"], tiny_onnx["ranker"], cpu=True,
                              server_env=fake_server_env)
    assert _models(given.path) == ["rfdeploy_detector", "rfdeploy_faces", "rfdeploy_ranker"]
    bundled = write_triton_repo(tmp_path / "bundled", cpu=True, use_ranker=True, server_env=fake_server_env)
    assert _models(bundled.path) == ["rfdeploy_detector", "rfdeploy_faces", "rfdeploy_ranker"]
    left_out = write_triton_repo(tmp_path / "left_out", tiny_onnx["detector"], tiny_onnx["ranker"], cpu=True,
                                 use_ranker=False, server_env=fake_server_env)
    assert _models(left_out.path) == ["rfdeploy_detector", "rfdeploy_faces"]
    # a GPU repository cannot serve the bundled ranker (it needs an engine): refused, nothing written
    with pytest.raises(InputError, match="ranker engine"):
        write_triton_repo(tmp_path / "gpu", "det.engine", use_ranker=True)
    assert not (tmp_path / "gpu").exists()
