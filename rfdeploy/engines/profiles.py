"""Optimization profiles: the input shape ranges an engine accepts.

Users give shapes on the command line as ``[NAME:]NxCxHxW`` (``--min-shape/--opt-shape/--max-shape``)
or as named presets (``--profile vga``). A shape without a name belongs to the *image* input
(the network's only 4-D input, or the one named image/images/input). Unresolved
:class:`ProfileSpec` objects are resolved against the network's inputs into :class:`Profile`
objects; inputs other than the image whose only dynamic dimension is the batch follow the image's
batch range, so a ranker with ``image [B,3,H,W]`` and ``boxes [B,N,5]`` needs shapes for ``boxes``
only when N is dynamic.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

from rfdeploy.core.errors import EngineMismatchError, InputError

Shape = tuple[int, ...]
# An input's declared shape: ints for fixed dims, None (or a negative int) for dynamic ones.
DeclaredShape = Sequence[int | None]

IMAGE_INPUT_NAMES = ("image", "images", "input", "pixel_values")


@dataclass(frozen=True)
class ShapeRange:
    min: Shape
    opt: Shape
    max: Shape

    def __post_init__(self):
        object.__setattr__(self, "min", tuple(int(v) for v in self.min))
        object.__setattr__(self, "opt", tuple(int(v) for v in self.opt))
        object.__setattr__(self, "max", tuple(int(v) for v in self.max))

    @classmethod
    def fixed(cls, shape: Sequence[int]) -> "ShapeRange":
        return cls(tuple(shape), tuple(shape), tuple(shape))

    def contains(self, shape: Sequence[int]) -> bool:
        return len(shape) == len(self.min) and all(
            lo <= int(s) <= hi for lo, s, hi in zip(self.min, shape, self.max)
        )

    def to_dict(self) -> dict[str, list[int]]:
        return {"min": list(self.min), "opt": list(self.opt), "max": list(self.max)}

    @classmethod
    def from_dict(cls, d: Mapping) -> "ShapeRange":
        return cls(tuple(d["min"]), tuple(d["opt"]), tuple(d["max"]))

    def __str__(self) -> str:
        return f"min {format_shape(self.min)}, opt {format_shape(self.opt)}, max {format_shape(self.max)}"


@dataclass(frozen=True)
class ProfileSpec:
    """One profile as the user gave it: the image range (name unknown yet) plus named ranges."""

    image: ShapeRange | None = None
    named: Mapping[str, ShapeRange] = field(default_factory=dict)
    preset: str | None = None
    # The command-line arguments that reproduce this spec (for the manifest's rebuild command).
    cli_args: tuple[str, ...] = ()


@dataclass(frozen=True)
class Profile:
    """A resolved profile: a shape range for every network input."""

    shapes: Mapping[str, ShapeRange]
    preset: str | None = None

    def contains(self, shapes: Mapping[str, Sequence[int]]) -> bool:
        return all(n in self.shapes and self.shapes[n].contains(s) for n, s in shapes.items())

    def max_volume(self) -> int:
        return sum(math.prod(r.max) for r in self.shapes.values())

    def to_dict(self) -> dict:
        d: dict = {"shapes": {n: r.to_dict() for n, r in self.shapes.items()}}
        if self.preset:
            d["preset"] = self.preset
        return d

    @classmethod
    def from_dict(cls, d: Mapping) -> "Profile":
        return cls({n: ShapeRange.from_dict(r) for n, r in d["shapes"].items()}, d.get("preset"))


# --- presets ---------------------------------------------------------------------------------
# Heights are padded to the contract's multiple of 32 (1080 -> 1088, 2160 -> 2176).
PRESETS: dict[str, ShapeRange] = {
    "vga": ShapeRange.fixed((1, 3, 480, 640)),
    "720p": ShapeRange.fixed((1, 3, 736, 1280)),
    "1080p": ShapeRange.fixed((1, 3, 1088, 1920)),
    "4k": ShapeRange.fixed((1, 3, 2176, 3840)),
    # Tiled inference feeds batches of square tiles; opt is the typical batch.
    "tile1024": ShapeRange((1, 3, 1024, 1024), (4, 3, 1024, 1024), (8, 3, 1024, 1024)),
    "tile640": ShapeRange((1, 3, 640, 640), (4, 3, 640, 640), (8, 3, 640, 640)),
    # Any image up to 1080p, one at a time.
    "dynamic1080p": ShapeRange((1, 3, 32, 32), (1, 3, 480, 640), (1, 3, 1088, 1920)),
}


def preset_names() -> list[str]:
    return sorted(PRESETS)


def preset_spec(name: str) -> ProfileSpec:
    key = name.strip().lower()
    if key not in PRESETS:
        raise InputError(f"unknown profile preset {name!r}", hint=f"choose from: {', '.join(preset_names())}")
    return ProfileSpec(image=PRESETS[key], preset=key, cli_args=("--profile", key))


# --- parsing ---------------------------------------------------------------------------------
_SHAPE_RE = re.compile(r"^\d+(x\d+)*$")


def format_shape(shape: Sequence[int]) -> str:
    return "x".join(str(int(v)) for v in shape)


def parse_shape(text: str) -> Shape:
    """'1x3x480x640' -> (1, 3, 480, 640); dims must be positive integers."""
    t = text.strip().lower().replace("*", "x")
    if not _SHAPE_RE.match(t):
        raise InputError(f"bad shape {text!r}", hint="write shapes as NxCxHxW, e.g. 1x3x480x640")
    dims = tuple(int(v) for v in t.split("x"))
    if any(d <= 0 for d in dims):
        raise InputError(f"bad shape {text!r}: every dimension must be >= 1")
    return dims


def parse_shape_arg(text: str) -> tuple[str | None, Shape]:
    """'[NAME:]NxCxHxW' -> (name or None, shape). Names may contain ':' (the last one splits)."""
    name, sep, shape = text.rpartition(":")
    if not sep:
        return None, parse_shape(text)
    if not name.strip():
        raise InputError(f"bad shape argument {text!r}: empty input name before ':'")
    return name.strip(), parse_shape(shape)


def _collect(kind: str, args: Iterable[str]) -> dict[str | None, Shape]:
    out: dict[str | None, Shape] = {}
    for a in args:
        name, shape = parse_shape_arg(a)
        if name in out:
            who = name or "the image input"
            raise InputError(f"--{kind}-shape given twice for {who}")
        out[name] = shape
    return out


def spec_from_shape_args(
    min_shapes: Iterable[str] = (), opt_shapes: Iterable[str] = (), max_shapes: Iterable[str] = ()
) -> ProfileSpec | None:
    """One profile from --min/--opt/--max-shape arguments; None when none were given.

    Per input, either all three are given, or only --opt-shape (a fixed shape).
    """
    mins, opts, maxs = _collect("min", min_shapes), _collect("opt", opt_shapes), _collect("max", max_shapes)
    names = list(dict.fromkeys([*mins, *opts, *maxs]))
    if not names:
        return None
    ranges: dict[str | None, ShapeRange] = {}
    args: list[str] = []
    for n in names:
        got = [k for k, d in (("min", mins), ("opt", opts), ("max", maxs)) if n in d]
        who = f"input {n!r}" if n else "the image input"
        if got == ["opt"]:
            ranges[n] = ShapeRange.fixed(opts[n])
        elif len(got) == 3:
            ranges[n] = ShapeRange(mins[n], opts[n], maxs[n])
        else:
            missing = sorted({"min", "opt", "max"} - set(got))
            raise InputError(
                f"{who}: --{'/--'.join(got)}-shape given without --{'/--'.join(missing)}-shape",
                hint="give all three of --min-shape/--opt-shape/--max-shape, or only --opt-shape for a fixed shape",
            )
        validate_range(ranges[n], who)
        prefix = f"{n}:" if n else ""
        for k, d in (("min", mins), ("opt", opts), ("max", maxs)):
            if n in d:
                args += [f"--{k}-shape", prefix + format_shape(d[n])]
    image = ranges.pop(None, None)
    return ProfileSpec(image=image, named={k: v for k, v in ranges.items() if k}, cli_args=tuple(args))


def specs_from_cli(
    min_shapes: Iterable[str] = (),
    opt_shapes: Iterable[str] = (),
    max_shapes: Iterable[str] = (),
    presets: Iterable[str] = (),
) -> list[ProfileSpec]:
    """All profiles the command line asks for.

    Explicit shapes form one profile if they include the image input (unnamed, or by one of its
    names, ``image:...``). Explicit shapes for other inputs only (e.g. a ranker's ``boxes``) apply
    to every preset profile instead.
    """
    presets = list(presets)  # read twice below
    explicit = spec_from_shape_args(min_shapes, opt_shapes, max_shapes)
    specs: list[ProfileSpec] = []
    extra: Mapping[str, ShapeRange] = {}
    extra_args: tuple[str, ...] = ()
    if explicit is not None:
        names_image = any(n in IMAGE_INPUT_NAMES for n in explicit.named)
        if explicit.image is not None or names_image or not presets:
            specs.append(explicit)
        else:
            extra, extra_args = explicit.named, explicit.cli_args
    for p in presets:
        base = preset_spec(p)
        specs.append(ProfileSpec(base.image, dict(extra), base.preset, base.cli_args + extra_args))
    return specs


# --- validation and resolution ---------------------------------------------------------------
def validate_range(r: ShapeRange, who: str = "input") -> None:
    if not (len(r.min) == len(r.opt) == len(r.max)):
        raise InputError(
            f"{who}: min/opt/max shapes have different ranks ({format_shape(r.min)}, "
            f"{format_shape(r.opt)}, {format_shape(r.max)})"
        )
    for i, (lo, op, hi) in enumerate(zip(r.min, r.opt, r.max)):
        if not (lo <= op <= hi):
            raise InputError(
                f"{who}: dimension {i} must satisfy min <= opt <= max, got {lo} / {op} / {hi} "
                f"({r})"
            )


def _is_dynamic(d: int | None) -> bool:
    return d is None or int(d) < 0


def _check_against_declared(r: ShapeRange, declared: DeclaredShape, who: str) -> None:
    validate_range(r, who)
    if len(r.min) != len(declared):
        raise InputError(
            f"{who}: shape has rank {len(r.min)} but the model's input has rank {len(declared)} "
            f"(declared {_fmt_declared(declared)})"
        )
    for i, d in enumerate(declared):
        if not _is_dynamic(d) and not (r.min[i] == r.opt[i] == r.max[i] == int(d)):
            raise InputError(
                f"{who}: dimension {i} is fixed to {d} in the model (declared {_fmt_declared(declared)}), "
                f"but the profile asks for {r.min[i]} / {r.opt[i]} / {r.max[i]}"
            )


def _fmt_declared(declared: DeclaredShape) -> str:
    return "x".join("?" if _is_dynamic(d) else str(int(d)) for d in declared)


def find_image_input(inputs: Mapping[str, DeclaredShape]) -> str:
    """The input that unnamed shapes and presets refer to."""
    rank4 = [n for n, s in inputs.items() if len(s) == 4]
    if len(rank4) == 1:
        return rank4[0]
    for n in IMAGE_INPUT_NAMES:
        if n in inputs:
            return n
    if len(inputs) == 1:
        return next(iter(inputs))
    raise InputError(
        f"cannot tell which input is the image among {sorted(inputs)}",
        hint="name the input in the shape, e.g. --opt-shape image:1x3x480x640",
    )


def resolve_profile(spec: ProfileSpec, inputs: Mapping[str, DeclaredShape]) -> Profile:
    """Give every input of the network a shape range, or raise InputError saying what is missing."""
    unknown = sorted(set(spec.named) - set(inputs))
    if unknown:
        raise InputError(f"profile names unknown input(s) {unknown}; the model's inputs are {sorted(inputs)}")
    shapes: dict[str, ShapeRange] = {}
    image_name: str | None = None
    if spec.image is not None:
        image_name = find_image_input(inputs)
        if image_name in spec.named:
            raise InputError(f"input {image_name!r} given both with and without its name")
        shapes[image_name] = spec.image
    shapes.update(spec.named)
    if image_name is None:
        cand = [n for n in IMAGE_INPUT_NAMES if n in shapes] or [n for n in shapes if len(inputs[n]) == 4]
        image_name = cand[0] if cand else None

    for name, declared in inputs.items():
        who = f"input {name!r}" + (f" (profile {spec.preset})" if spec.preset else "")
        if name in shapes:
            _check_against_declared(shapes[name], declared, who)
            continue
        dyn = [i for i, d in enumerate(declared) if _is_dynamic(d)]
        if not dyn:
            shapes[name] = ShapeRange.fixed(tuple(int(d) for d in declared))
        elif dyn == [0] and image_name is not None:
            # Batch follows the image's batch.
            b = shapes[image_name]
            fixed = [int(d) for d in declared[1:]]
            shapes[name] = ShapeRange((b.min[0], *fixed), (b.opt[0], *fixed), (b.max[0], *fixed))
        else:
            raise InputError(
                f"{who} has dynamic dimensions {dyn} (declared {_fmt_declared(declared)}) and the profile "
                "gives no shape for it",
                hint=f"add --min-shape/--opt-shape/--max-shape {name}:" + "x".join(
                    "N" if _is_dynamic(d) else str(int(d)) for d in declared
                ),
            )
    return Profile({n: shapes[n] for n in inputs}, spec.preset)


def resolve_profiles(specs: Sequence[ProfileSpec | Profile], inputs: Mapping[str, DeclaredShape]) -> list[Profile]:
    """Resolve all specs; with none given, a fully static network gets its one fixed profile."""
    out: list[Profile] = []
    for s in specs:
        if isinstance(s, Profile):
            s = ProfileSpec(named=dict(s.shapes), preset=s.preset)
        out.append(resolve_profile(s, inputs))
    if not out:
        dynamic = {n: _fmt_declared(s) for n, s in inputs.items() if any(_is_dynamic(d) for d in s)}
        if dynamic:
            raise InputError(
                f"the model has dynamic inputs {dynamic} and no profile was given",
                hint=f"add --profile PRESET ({', '.join(preset_names())}) or --min-shape/--opt-shape/--max-shape",
            )
        out.append(resolve_profile(ProfileSpec(), inputs))
    return out


def select_profile(profiles: Sequence[Profile], shapes: Mapping[str, Sequence[int]]) -> int:
    """Index of the profile to run ``shapes`` with: among those that contain them, the tightest
    (smallest max volume, so kernels were tuned closest to this size); ties keep the first."""
    fitting = [i for i, p in enumerate(profiles) if p.contains(shapes)]
    if not fitting:
        given = ", ".join(f"{n} {format_shape(s)}" for n, s in shapes.items())
        avail = "; ".join(
            f"#{i}" + (f" ({p.preset})" if p.preset else "") + ": "
            + ", ".join(f"{n} {r}" for n, r in p.shapes.items())
            for i, p in enumerate(profiles)
        )
        raise EngineMismatchError(f"input shape(s) {given} fall outside every profile of the engine [{avail}]")
    return min(fitting, key=lambda i: profiles[i].max_volume())


# --- what a runtime may feed -----------------------------------------------------------------
@dataclass(frozen=True)
class InputLimits:
    """The image inputs one profile of a detector engine takes, as the tiled runtime needs them.

    Every input the runtime makes from these limits lies inside profile ``index``: batches of
    ``1..max_batch``; whole images whose padded size fits ``max_size``; square tiles of at most
    ``max_tile`` a side; everything padded up to at least ``min_size``. Sizes are (width, height).
    """

    index: int
    max_batch: int
    min_size: tuple[int, int]
    max_size: tuple[int, int]
    max_tile: int


def _image_range(p: Profile) -> tuple[str, ShapeRange] | None:
    rank4 = {n: r for n, r in p.shapes.items() if len(r.min) == 4}
    for n in IMAGE_INPUT_NAMES:
        if n in rank4:
            return n, rank4[n]
    return next(iter(rank4.items())) if len(rank4) == 1 else None


def input_limits(profiles: Sequence[Profile], pad_multiple: int = 1) -> InputLimits:
    """The one profile a tiled runtime should feed, and what it admits.

    One profile, not the union of all: shapes mixed from several profiles (one's minimum, another's
    maximum) may fit none. The choice is the profile with the largest square input (the tile size
    limit), then the largest input area, then the largest batch; a profile must admit a batch of one
    image (the untiled case). Tiles are squares, so a fixed 640x480 profile takes tiles of 480.
    """
    best: tuple[tuple[int, int, int], InputLimits] | None = None
    for i, p in enumerate(profiles):
        found = _image_range(p)
        if found is None or found[1].min[0] > 1:
            continue
        r = found[1]
        # a tile is padded to the contract's multiple: round down so the padded tile still fits
        side = min(r.max[2], r.max[3]) // pad_multiple * pad_multiple
        lim = InputLimits(i, int(r.max[0]), (int(r.min[3]), int(r.min[2])), (int(r.max[3]), int(r.max[2])), int(side))
        key = (lim.max_tile, r.max[2] * r.max[3], lim.max_batch)
        if best is None or key > best[0]:
            best = (key, lim)
    if best is None:
        raise EngineMismatchError(
            "no profile of the engine takes a batch of one image "
            + "; ".join(f"#{i}: " + ", ".join(f"{n} {r}" for n, r in p.shapes.items()) for i, p in enumerate(profiles)),
            hint="rebuild it with a profile whose minimum batch is 1 (e.g. without --profile: the runtime's default)",
        )
    return best[1]
