"""Tile geometry for large images: which crops to run, at which scales, and which boxes to keep.

Pure functions (numpy only). Coordinates are pixels, boxes are ``x1, y1, x2, y2`` with ``x2``/``y2``
exclusive edges (a box ``[0, 0, 10, 10]`` covers 10x10 pixels), tiles likewise.

The guarantee
-------------
For one tile grid (:func:`plan_tiles`) with overlap ``O`` and a seam margin ``m`` (the margin used by
:func:`drop_cut_boxes`): every box inside the image whose width and height are both at most
``O - 2m`` lies inside at least one tile at a distance of at least ``m`` from each of that tile's
*inner* borders (borders that are not the image border), so :func:`drop_cut_boxes` keeps it there.

Proof (per axis; the tile is the product of the two axis intervals). Tile starts
``0 = s_0 < s_1 < ... < s_{n-1} = L - T`` have ``s_{i+1} - s_i <= T - O``. Take an interval
``[a, b]`` with ``b - a <= O - 2m`` and widen it to ``[a', b'] = [max(a - m, 0), min(b + m, L)]``, of
length ``<= O``. Let ``i`` be the last tile with ``s_i <= a'``. If ``i = n-1`` its end is ``L >= b'``.
Otherwise ``s_{i+1} > a'`` and the end ``s_i + T >= s_{i+1} + O > a' + O >= b'``. So
``[a', b'] ⊂ [s_i, s_i + T]``: a start ``s_i > 0`` gives ``a' > 0``, hence ``a - m = a' >= s_i``;
likewise at the end. □

:func:`plan_pyramid` adds downscaled passes so that every face, however large, is inside some
pass's size range ``[min_face, max_face]`` (measured at that pass's scale) and therefore, by the
guarantee above, whole and kept in a tile of that pass. See :class:`TilePlan`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from rfdeploy.core.sizes import DEFAULT_AUTO_MAX_INPUT, DEFAULT_AUTO_TILE, MIN_TILE

# Comparisons of box edges allow this much floating-point slack (pixels), so a box exactly at a
# limit is not lost to rounding in the scale/offset arithmetic.
EPS = 1e-3
MAX_PASSES = 32  # a bound on the scale pyramid; a pyramid this deep means a near-1 size ratio


@dataclass(frozen=True)
class Tile:
    """A crop ``[x0, x1) x [y0, y1)`` of a (possibly scaled) image."""

    x0: int
    y0: int
    x1: int
    y1: int

    def __post_init__(self):
        if not (0 <= self.x0 < self.x1 and 0 <= self.y0 < self.y1):
            raise ValueError(f"invalid tile {self}")

    @property
    def width(self) -> int:
        return self.x1 - self.x0

    @property
    def height(self) -> int:
        return self.y1 - self.y0

    def crop(self, image: np.ndarray) -> np.ndarray:
        """The tile's pixels of an HxW[xC] array (a view, no copy)."""
        return image[self.y0 : self.y1, self.x0 : self.x1]


def _axis_tiling(length: int, tile: int, overlap: int, multiple: int = 1) -> tuple[int, list[int]]:
    """(tile side, tile starts) along one axis: the fewest tiles of at most ``tile`` that overlap
    by ``>= overlap``, then the smallest side (a multiple of ``multiple``, or ``tile``) with which
    that many tiles still do. First start 0, last ``length - side``, steps ``<= side - overlap``."""
    if length <= tile:
        return length, [0]
    n = 1 + -(-(length - tile) // (tile - overlap))  # fewest tiles whose steps fit
    # n tiles of side T cover the axis with steps <= T - overlap iff n*T >= length + (n-1)*overlap
    side = -(-(length + (n - 1) * overlap) // n)
    side = min(tile, -(-side // multiple) * multiple)
    span = length - side
    # Integer steps floor/ceil(span / (n-1)) <= side - overlap, spread evenly.
    return side, [(i * span) // (n - 1) for i in range(n)]


def plan_tiles(width: int, height: int, tile: int, overlap: int, multiple: int = 1) -> list[Tile]:
    """Cover a ``width`` x ``height`` image with crops of at most ``tile`` x ``tile`` overlapping by
    ``>= overlap``.

    Every tile has the same shape (no slivers: edge tiles are shifted inward), so all tiles of an
    image can share one batch. Per axis: the fewest tiles of side ``tile``, then the side shrunk
    to the smallest multiple of ``multiple`` (the detector's padding) that still covers the axis
    with that many tiles, so the overlap is not larger than it must be. Row-major order.
    """
    for name, v in (("width", width), ("height", height), ("tile", tile), ("overlap", overlap),
                    ("multiple", multiple)):
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool):
            raise TypeError(f"{name} must be an int, got {type(v).__name__}")
    if width < 1 or height < 1:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    if not (0 <= overlap < tile):
        raise ValueError(f"need 0 <= overlap < tile, got overlap={overlap}, tile={tile}")
    if multiple < 1:
        raise ValueError(f"multiple must be >= 1, got {multiple}")
    tw, xs = _axis_tiling(width, tile, overlap, multiple)
    th, ys = _axis_tiling(height, tile, overlap, multiple)
    return [Tile(x, y, x + tw, y + th) for y in ys for x in xs]


@dataclass(frozen=True)
class Pass:
    """One inference pass: the image resized to ``width`` x ``height`` and cut into ``tiles``.

    ``scale_x = width / image_width`` and ``scale_y = height / image_height`` (1.0 for the
    full-resolution pass). ``min_face``/``max_face`` are the face sizes (longer box side, in this
    pass's pixels) the pass is responsible for; ``None`` = unbounded on that side.
    """

    scale_x: float
    scale_y: float
    width: int
    height: int
    tiles: tuple[Tile, ...]
    overlap: int
    min_face: float | None
    max_face: float | None

    @property
    def tile_shape(self) -> tuple[int, int]:
        """(height, width) shared by every tile of this pass."""
        return self.tiles[0].height, self.tiles[0].width

    @property
    def scale(self) -> tuple[float, float]:
        return self.scale_x, self.scale_y

    def responsible(self, boxes: np.ndarray) -> np.ndarray:
        """Mask of boxes (in this pass's pixels) whose size lies in this pass's face range.

        Optional filter before merging passes: each face is then reported by the pass that
        sees it at a size the detector handles best, which reduces duplicate and poorly
        localised boxes (a tiny face in a downscaled pass).
        """
        b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        size = np.maximum(b[:, 2] - b[:, 0], b[:, 3] - b[:, 1])
        keep = np.ones(len(b), bool)
        if self.min_face is not None:
            keep &= size >= self.min_face - EPS
        if self.max_face is not None:
            keep &= size <= self.max_face + EPS
        return keep


@dataclass(frozen=True)
class TilePlan:
    """All passes for one image (first = full resolution, then smaller scales).

    Guarantee: take any box in the image whose longer side ``f`` (image pixels) is at most the
    image's shorter side and at least ``min_face`` (faces smaller than that are beyond the detector
    at any scale). Some pass ``k`` sees it with its longer side, in that pass's pixels, within
    ``[passes[k].min_face, passes[k].max_face]``, and in pass ``k`` it lies in a tile
    at least ``margin`` pixels from that tile's inner borders, so :func:`drop_cut_boxes` keeps
    it. (The first pass has no lower size bound and the last no upper bound, so faces below
    ``min_face`` are still searched at full resolution.)
    """

    image_width: int
    image_height: int
    tile: int
    max_face: int
    min_face: int
    margin: int
    passes: tuple[Pass, ...]

    @property
    def num_tiles(self) -> int:
        return sum(len(p.tiles) for p in self.passes)


def plan_pyramid(
    width: int,
    height: int,
    tile: int,
    max_face_at_tile: int,
    min_face_at_tile: int = 16,
    margin: int = 2,
    multiple: int = 1,
) -> TilePlan:
    """Plan tiled passes over a large image (see :class:`TilePlan` for what is guaranteed).

    ``max_face_at_tile``: the largest face (longer box side, pixels at tile scale) the detector
    should find whole in a tile; each pass's overlap is ``max_face_at_tile + 2*margin``.
    ``min_face_at_tile``: the smallest face the detector finds reliably; consecutive passes shrink
    by at most ``min_face_at_tile / max_face_at_tile``, so a face too big for one pass is at least
    ``min_face_at_tile`` in the next. A larger ratio costs more passes but keeps faces away from
    the ends of the detector's range. Passes stop once the image's shorter side is at most
    ``max_face_at_tile`` (any face fits). ``multiple``: the detector's padding multiple, to which
    tiles are fitted (see :func:`plan_tiles`).
    """
    if margin < 0:
        raise ValueError("margin must be >= 0")
    if not (0 < min_face_at_tile < max_face_at_tile):
        raise ValueError(
            f"need 0 < min_face_at_tile < max_face_at_tile, got {min_face_at_tile}, {max_face_at_tile}"
        )
    overlap = max_face_at_tile + 2 * margin
    if overlap >= tile:
        raise ValueError(
            f"tile {tile} is too small for faces up to {max_face_at_tile} px with margin {margin}: "
            f"need tile > max_face_at_tile + 2*margin = {overlap}"
        )
    if width < 1 or height < 1:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    # Exact rational arithmetic: the pass rules below are inequalities that must not flip on rounding.
    ratio = Fraction(min_face_at_tile, max_face_at_tile)
    passes: list[Pass] = []
    w, h = width, height
    while True:
        if len(passes) >= MAX_PASSES:
            raise ValueError(
                f"more than {MAX_PASSES} passes needed for {width}x{height}; "
                f"lower min_face_at_tile ({min_face_at_tile}) relative to max_face_at_tile ({max_face_at_tile})"
            )
        sx, sy = Fraction(w, width), Fraction(h, height)
        done = min(width, height) * max(sx, sy) <= max_face_at_tile
        passes.append(
            Pass(
                scale_x=float(sx),
                scale_y=float(sy),
                width=w,
                height=h,
                tiles=tuple(plan_tiles(w, h, tile, overlap, multiple)),
                overlap=overlap,
                min_face=None if not passes else float(min_face_at_tile),
                max_face=None if done else float(max_face_at_tile),
            )
        )
        if done:
            break
        w, h = _next_size(width, height, max(sx, sy) * ratio, Fraction(max_face_at_tile, min(width, height)))
    return TilePlan(width, height, tile, max_face_at_tile, min_face_at_tile, margin, tuple(passes))


def _next_size(width: int, height: int, s_step: Fraction, s_stop: Fraction) -> tuple[int, int]:
    """Size of the next pass.

    Both axis scales must be >= ``s_step`` (= previous larger axis scale * min/max face ratio), so
    that for every box: size at the previous pass > max_face implies size at this pass > min_face.
    When the scale at which the shorter side equals max_face (``s_stop``) is allowed, it is used
    (rounded down if that still keeps the step rule), so the pyramid ends at a useful size
    instead of stepping on to a thumbnail.
    """

    def size(s: Fraction, rnd) -> tuple[int, int]:
        return max(1, rnd(width * s)), max(1, rnd(height * s))

    if s_stop >= s_step:
        for rnd in (math.floor, math.ceil):
            w, h = size(s_stop, rnd)
            if min(Fraction(w, width), Fraction(h, height)) >= s_step:
                return w, h
    return size(s_step, math.ceil)


@dataclass(frozen=True, eq=False)
class TilePolicy:
    """``--tile``, parsed once: ``auto`` (tile only images too large to run whole), ``off``, or a
    fixed tile ``size``. ``str()`` gives the canonical spelling back (``auto``, ``off``, ``1024``),
    and a policy equals its spellings (``TilePolicy.parse("AUTO") == "auto"``)."""

    mode: str = "auto"  # auto | off | size
    size: int | None = None

    def __post_init__(self):
        if self.mode not in ("auto", "off", "size") or (self.mode == "size") != (self.size is not None):
            raise ValueError(f"invalid tile policy {self.mode!r} / {self.size!r}")
        if self.size is not None and self.size < MIN_TILE:
            raise ValueError(f"tile size must be >= {MIN_TILE}, got {self.size}")

    @classmethod
    def parse(cls, spec: "str | int | TilePolicy") -> "TilePolicy":
        """``auto``, ``off`` (any case, spaces around ignored) or an integer size >= 64; ValueError
        otherwise."""
        if isinstance(spec, TilePolicy):
            return spec
        s = str(spec).strip().lower()
        if s in ("auto", "off"):
            return cls(s)
        try:
            size = int(s)
        except ValueError:
            raise ValueError(f"tile must be 'auto', 'off' or an integer size >= {MIN_TILE}, got {spec!r}") from None
        return cls("size", size)

    def __str__(self) -> str:
        return str(self.size) if self.mode == "size" else self.mode

    def __eq__(self, other) -> bool:
        if isinstance(other, (str, int)) and not isinstance(other, bool):
            try:
                other = TilePolicy.parse(other)
            except ValueError:
                return False
        if not isinstance(other, TilePolicy):
            return NotImplemented
        return (self.mode, self.size) == (other.mode, other.size)

    def __hash__(self) -> int:
        return hash((self.mode, self.size))

    def tile_size(self, width: int, height: int, max_input: int | None = None,
                  auto_tile: int = DEFAULT_AUTO_TILE) -> int | None:
        """The tile size for one image, or ``None`` for no tiling.

        * ``off``: never tile.
        * ``auto``: no tiling when the long side fits ``max_input`` (the engine's largest input side;
          default 2048), else tiles of ``auto_tile`` (default 1024; ``max_input`` when that is smaller).
        * a size: tiles of that size (at most ``max_input`` when given).
        """
        if width < 1 or height < 1:
            raise ValueError(f"image size must be positive, got {width}x{height}")
        if max_input is not None and max_input < MIN_TILE:
            raise ValueError(f"max_input must be >= {MIN_TILE}, got {max_input}")
        if self.mode == "off":
            return None
        if self.mode == "auto":
            limit = max_input if max_input is not None else DEFAULT_AUTO_MAX_INPUT
            if max(width, height) <= limit:
                return None
            return min(auto_tile, limit)
        if max_input is not None and self.size > max_input:
            raise ValueError(f"tile size {self.size} exceeds the engine's largest input side {max_input}")
        return self.size


def choose_tile_size(width: int, height: int, spec: "str | TilePolicy", max_input: int | None = None) -> int | None:
    """Resolve ``--tile auto|off|SIZE`` (a string or a :class:`TilePolicy`) for one image: a tile
    size, or ``None`` for no tiling (see :meth:`TilePolicy.tile_size`)."""
    return TilePolicy.parse(spec).tile_size(width, height, max_input)


def to_image_coords(
    boxes: np.ndarray, tile: Tile, scale: float | tuple[float, float] = 1.0
) -> np.ndarray:
    """Tile-local boxes of a pass scaled by ``scale`` (or ``(scale_x, scale_y)``) -> image pixels."""
    sx, sy = (scale, scale) if np.isscalar(scale) else scale
    b = np.asarray(boxes, dtype=np.float32).reshape(-1, 4).copy()
    b[:, 0::2] = (b[:, 0::2] + tile.x0) / np.float32(sx)
    b[:, 1::2] = (b[:, 1::2] + tile.y0) / np.float32(sy)
    return b


def to_tile_coords(
    boxes: np.ndarray, tile: Tile, scale: float | tuple[float, float] = 1.0
) -> np.ndarray:
    """Inverse of :func:`to_image_coords`: image pixels -> tile-local pixels of a scaled pass (float64)."""
    sx, sy = (scale, scale) if np.isscalar(scale) else scale
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4).copy()
    b[:, 0::2] = b[:, 0::2] * sx - tile.x0
    b[:, 1::2] = b[:, 1::2] * sy - tile.y0
    return b


def keep_mask(boxes: np.ndarray, tile: Tile, image_w: int, image_h: int, margin: float) -> np.ndarray:
    """True for tile-local boxes that keep at least ``margin`` px from every *inner* tile border.

    A border is inner when it is not on the image border (``image_w``/``image_h``: size of the
    image the tile was cut from, i.e. of the scaled pass). A detector clips a face cut by the tile
    border to that border, so such boxes fall within the margin.
    """
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    keep = np.ones(len(b), bool)
    if tile.x0 > 0:
        keep &= b[:, 0] >= margin - EPS
    if tile.y0 > 0:
        keep &= b[:, 1] >= margin - EPS
    if tile.x1 < image_w:
        keep &= b[:, 2] <= tile.width - margin + EPS
    if tile.y1 < image_h:
        keep &= b[:, 3] <= tile.height - margin + EPS
    return keep


def drop_cut_boxes(
    boxes: np.ndarray, scores: np.ndarray, tile: Tile, image_w: int, image_h: int, margin: float
) -> tuple[np.ndarray, np.ndarray]:
    """Drop tile-local boxes within ``margin`` px of an inner tile border (see :func:`keep_mask`).

    Safe because the overlap guarantee (module docstring) puts every face up to the pass's
    ``max_face`` whole, and clear of inner borders, in another tile of the same pass.
    Returns the kept ``(boxes, scores)``.
    """
    b = np.asarray(boxes).reshape(-1, 4)
    s = np.asarray(scores).reshape(-1)
    if len(b) != len(s):
        raise ValueError(f"{len(b)} boxes but {len(s)} scores")
    k = keep_mask(b, tile, image_w, image_h, margin)
    return b[k], s[k]
