"""The optimization profile the runtime feeds an rfdeploy model with, from the file's kind and
preprocessing contract: what ``build-engine`` builds without ``--profile`` and what the engine
cache builds on first use, so an engine takes every input the pipeline makes.

Detector: tiles of ``DETECTOR_OPT_SIDE`` (the ``--tile auto`` size) in batches up to
``DETECTOR_MAX_BATCH`` (the pipeline's tile batch); whole images up to ``DETECTOR_MAX_SIDE`` (the
untiled limit) run whole; ``DETECTOR_MIN_SIDE`` is the smallest tile, to which the pipeline pads
smaller inputs (rfdeploy.core.sizes holds the numbers for both). The pipeline reads max batch /
max side / min side back from an engine's profile (rfdeploy.engines.profiles.input_limits), so it
never feeds a shape outside it. Ranker: its image resized to its contract's long side, plus its
fixed ``boxes``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from rfdeploy.core import onnxinfo
from rfdeploy.core.contract import PreprocessContract
from rfdeploy.core.errors import EngineMismatchError, InputError, ModelFileError
from rfdeploy.core.metadata import KIND, KINDS, onnx_metadata, read_config, read_contract, read_kind
from rfdeploy.core.sizes import DEFAULT_AUTO_MAX_INPUT, DEFAULT_AUTO_TILE, DEFAULT_TILE_BATCH, MIN_TILE, OPT_TILE_BATCH
from rfdeploy.engines.profiles import (
    Profile,
    ProfileSpec,
    ShapeRange,
    input_limits,
    preset_names,
    resolve_profiles,
    specs_from_cli,
)

DETECTOR_MIN_SIDE = MIN_TILE
DETECTOR_OPT_SIDE = DEFAULT_AUTO_TILE
DETECTOR_MAX_SIDE = DEFAULT_AUTO_MAX_INPUT
DETECTOR_OPT_BATCH = OPT_TILE_BATCH
DETECTOR_MAX_BATCH = DEFAULT_TILE_BATCH
DEFAULT_PROFILE = "default"


def _round_up(v: int, multiple: int) -> int:
    return -(-int(v) // multiple) * multiple


def detector_profile(contract: PreprocessContract) -> ProfileSpec:
    """Image range for a detector: 1..8 images, sides 64..2048 (rounded up to the contract's pad
    multiple, so any image whose long side fits the limit still fits after padding)."""
    p = contract.pad_multiple
    if contract.resize == "long_side":
        # A detector that resizes its input sees every image whole, one at a time.
        side = _round_up(contract.resize_to, p)
        return ProfileSpec(image=ShapeRange((1, 3, DETECTOR_MIN_SIDE, DETECTOR_MIN_SIDE), (1, 3, side, side),
                                            (1, 3, side, side)))
    opt, big = _round_up(DETECTOR_OPT_SIDE, p), _round_up(DETECTOR_MAX_SIDE, p)
    return ProfileSpec(image=ShapeRange(
        (1, 3, DETECTOR_MIN_SIDE, DETECTOR_MIN_SIDE),
        (DETECTOR_OPT_BATCH, 3, opt, opt),
        (DETECTOR_MAX_BATCH, 3, big, big),
    ))


def ranker_profile(contract: PreprocessContract, num_boxes: int) -> ProfileSpec:
    """Ranker: one image, resized so its long side is ``resize_to`` and padded (the short side can
    be as small as one pad step), plus the fixed ``boxes`` [1, N, 5]."""
    if contract.resize != "long_side":
        raise ModelFileError(
            f"the ranker's contract does not resize its input (resize={contract.resize!r}); "
            "its input size is unbounded and no engine profile can cover it"
        )
    p = contract.pad_multiple
    side = _round_up(contract.resize_to, p)
    opt_h = _round_up(side * 3 // 4, p)  # a 4:3 landscape photo, the common case
    image = ShapeRange((1, 3, p, p), (1, 3, opt_h, side), (1, 3, side, side))
    return ProfileSpec(image=image, named={"boxes": ShapeRange.fixed((1, int(num_boxes), 5))})


def onnx_facts(onnx_path: str | os.PathLike) -> tuple[dict[str, str], dict[str, tuple[int | None, ...]]]:
    """(metadata, declared input shapes with None for dynamic dims), read without the weights."""
    model = onnxinfo.load_onnx(onnx_path, weights=False)
    return onnx_metadata(model), onnxinfo.declared_inputs(model)


def profile_for(onnx_path: str | os.PathLike, kind: str | None = None) -> tuple[str, ProfileSpec]:
    """(kind, profile spec) for an rfdeploy ONNX file, from its ``rfdeploy.kind`` and contract
    metadata; ``kind`` given explicitly must agree with the file."""
    path = Path(onnx_path)
    return profile_from_facts(path, *onnx_facts(path), kind)


def profile_from_facts(path: Path, meta: dict[str, str], inputs: dict[str, tuple[int | None, ...]],
                       kind: str | None) -> tuple[str, ProfileSpec]:
    """:func:`profile_for` on facts already read (:func:`onnx_facts`)."""
    file_kind = meta.get(KIND)
    if kind is not None and kind not in KINDS:
        raise InputError(f"kind must be one of {KINDS}, got {kind!r}")
    if kind is not None and file_kind is not None and kind != file_kind:
        raise ModelFileError(f"{path} is a {file_kind} model, not a {kind}")
    kind = kind or file_kind
    if kind not in KINDS:
        raise ModelFileError(
            f"{path} has no rfdeploy.kind metadata ({file_kind!r}): cannot tell detector from ranker",
            hint="export it with `rfdeploy export`, or build an engine by hand with `rfdeploy build-engine`",
        )
    contract = read_contract(meta, path)
    if kind == "detector":
        return kind, detector_profile(contract)
    if "boxes" not in inputs or len(inputs["boxes"]) != 3:
        raise ModelFileError(f"{path}: a ranker needs a boxes [B,N,5] input; inputs are {inputs}")
    n = inputs["boxes"][1]
    if n is None:  # a dynamic N: the config says which N the model was made for
        try:
            n = int(read_config(meta, path)["num_boxes"])
        except (ModelFileError, KeyError, ValueError, TypeError) as e:
            raise ModelFileError(f"{path}: the ranker's N is dynamic and its config gives no num_boxes") from e
    return kind, ranker_profile(contract, n)


def default_profile(onnx_path: str | Path) -> ProfileSpec:
    """The profile the runtime feeds an rfdeploy model with, from the file's kind and contract.

    Detector: batches of 1..8 tiles of the default tile size (opt), whole images up to the untiled
    limit (max), down to the smallest padded input (min); ranker: its image resized to the long
    side its contract names, plus its fixed ``boxes``.
    """
    kind, spec = profile_for(onnx_path)
    return ProfileSpec(spec.image, dict(spec.named), preset=f"{DEFAULT_PROFILE} {kind}", cli_args=spec.cli_args)


def profile_specs(
    onnx_path: str | Path,
    *,
    min_shapes: Sequence[str] = (),
    opt_shapes: Sequence[str] = (),
    max_shapes: Sequence[str] = (),
    presets: Sequence[str] = (),
) -> list[ProfileSpec]:
    """The profiles `rfdeploy build-engine` builds, checked against the ONNX file's inputs (before
    any conversion or build starts). ``--profile default``, or no profile at all on a model with
    dynamic inputs, is the runtime's own profile (:func:`default_profile`)."""
    onnx_path = Path(onnx_path)
    declared = onnxinfo.declared_inputs(onnxinfo.load_onnx(onnx_path, weights=False))
    named = [p for p in presets if p.strip().lower() != DEFAULT_PROFILE]
    want_default = len(named) < len(presets)
    specs = specs_from_cli(min_shapes, opt_shapes, max_shapes, named)
    dynamic = any(d is None for dims in declared.values() for d in dims)
    if want_default or (not specs and dynamic):
        if KIND not in onnx_metadata(onnx_path):
            raise InputError(
                f"{onnx_path} has dynamic inputs "
                + ", ".join(f"{n} {'x'.join('?' if d is None else str(d) for d in dims)}" for n, dims in declared.items())
                + " and no rfdeploy metadata, so no default profile can be derived",
                hint=f"add --profile PRESET ({', '.join(preset_names())}) or --min-shape/--opt-shape/--max-shape",
            )
        specs.insert(0, default_profile(onnx_path))
    resolved = resolve_profiles(specs, declared)  # refuse bad shapes now, not after an fp16/int8 conversion
    _check_runtime_fit(onnx_path, resolved)
    return specs


def _check_runtime_fit(onnx_path: Path, profiles: Sequence[Profile]) -> None:
    """Refuse profiles the runtime cannot feed an rfdeploy model through: a detector needs a
    profile that takes one image of at least a tile's minimum; a ranker sees the whole image
    resized to its contract's long side, landscape or portrait, so some profile must take that
    side both ways."""
    meta = onnx_metadata(onnx_path)
    kind = read_kind(meta)
    if kind is None:
        return
    try:
        contract = read_contract(meta, onnx_path)
    except ModelFileError:
        return  # the build reports a broken contract when the engine is used
    hint = "build without --profile/shapes (the runtime's profile), or add --profile default"
    try:
        lim = input_limits(profiles, contract.pad_multiple)
    except EngineMismatchError as e:
        raise InputError(str(e).split("\n")[0], hint=hint) from None
    if kind == "detector" and contract.resize == "none" and lim.max_tile < MIN_TILE:
        raise InputError(f"the largest input of these profiles ({lim.max_size[0]}x{lim.max_size[1]}) cannot "
                         f"hold a {MIN_TILE} px tile", hint=hint)
    if kind == "ranker" and contract.resize == "long_side":
        side = -(-contract.resize_to // contract.pad_multiple) * contract.pad_multiple
        if min(lim.max_size) < side:
            raise InputError(
                f"the ranker sees every image resized to a long side of {contract.resize_to} px (padded {side}), "
                f"landscape or portrait; the largest input of these profiles is {lim.max_size[0]}x{lim.max_size[1]}",
                hint=hint)


