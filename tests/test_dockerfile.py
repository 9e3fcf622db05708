"""Offline checks of the Dockerfile (no Docker engine runs here: it is parsed, never built)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def dockerfile():
    dfp = pytest.importorskip("dockerfile_parse", reason="dockerfile-parse is not installed (pip install dockerfile-parse)")
    return dfp.DockerfileParser(path=str(ROOT / "Dockerfile"), cache_content=True)


def _stages(df) -> list[list[dict]]:
    """Instructions per build stage."""
    stages: list[list[dict]] = []
    for ins in df.structure:
        if ins["instruction"] == "FROM":
            stages.append([])
        if stages:
            stages[-1].append(ins)
    return stages


def test_base_images_are_pinned(dockerfile):
    parents = dockerfile.parent_images  # ARGs resolved
    assert parents and all(p for p in parents)
    for image in parents:
        if image in ("build", "runtime"):
            continue
        name, _, digest = image.partition("@")
        last = name.rsplit("/", 1)[-1]
        assert ":" in last or digest, f"{image}: no tag or digest"
        tag = last.partition(":")[2]
        assert tag and tag != "latest", f"{image}: pin a release tag, not {tag or 'nothing'}"
        if digest:
            assert re.fullmatch(r"sha256:[0-9a-f]{64}", digest)
    assert parents[-1].startswith("nvcr.io/nvidia/tensorrt:")
    # The TensorRT and CUDA versions of that tag are written beside it.
    text = (ROOT / "Dockerfile").read_text()
    tag = parents[-1].split(":")[-1]
    assert re.search(rf"release {re.escape(tag.split('-')[0])} = TensorRT \d+\.\d+[\d.]*, CUDA \d+\.\d+", text)


def test_installs_the_package_with_the_gpu_extra_in_the_final_stage(dockerfile):
    stages = _stages(dockerfile)
    assert len(stages) >= 2, "multi-stage: build tools stay out of the runtime image"
    final = stages[-1]
    runs = " ".join(i["value"] for i in final if i["instruction"] == "RUN")
    assert re.search(r"pip install [^&]*rfdeploy[^&]*\[gpu\]", runs), runs
    assert "build-essential" not in runs and "apt-get install" not in runs
    # The wheel comes from the build stage.
    assert any(i["instruction"] == "COPY" and "--from=build" in i["value"] for i in final)


def test_cuda_python_is_held_to_the_base_images_cuda(dockerfile):
    """The 25.01 base ships CUDA 12.8; cuda-python 13 binds the CUDA 13 runtime."""
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"CUDA 12\.\d", text)
    final = _stages(dockerfile)[-1]
    runs = " ".join(i["value"] for i in final if i["instruction"] == "RUN")
    assert "cuda-python>=12.0,<13" in runs and "cuda-bindings<13" in runs
    assert re.search(r"PIP_CONSTRAINT=\S+ python3 -m pip install [^&]*\[gpu\]", runs), runs


def test_entrypoint_user_and_volumes(dockerfile):
    final = _stages(dockerfile)[-1]
    entry = [i["value"] for i in final if i["instruction"] == "ENTRYPOINT"]
    assert entry and json.loads(entry[-1]) == ["rfdeploy"]
    users = [i["value"].strip() for i in final if i["instruction"] == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    volumes = [v for i in final if i["instruction"] == "VOLUME" for v in json.loads(i["value"])]
    env = dockerfile.envs
    assert env.get("RFDEPLOY_ENGINE_CACHE") in volumes
    assert "/models" in volumes
    # The user owns the volumes' mount points (engines are written into the cache).
    runs = " ".join(i["value"] for i in final if i["instruction"] == "RUN")
    assert re.search(r"chown \S*rfdeploy\S* [^&]*/cache", runs)


def test_not_built_here_is_said():
    assert "NOT BUILT IN THIS PROJECT'S CI" in (ROOT / "Dockerfile").read_text()
