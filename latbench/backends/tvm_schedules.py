"""The ``tvm`` backend: TVM with latbench's own schedule rules for the space's op patterns.

TVM 0.27's default CPU pipeline schedules nothing (single loops, no threads, no vectors), so an
untuned MBConv block runs ~3x slower than PyTorch eager. The rules here turn each PrimFunc that
the ``zero`` pipeline produces into a parallel, vectorised register-tiled loop nest, without any
tuning (see ``../shared/notes/tvm-tuning.md``):

* BN after a conv is folded into its constant weights and a bias (``FoldBatchnormToConv2D``; any
  other BN becomes element-wise ops), and every element-wise op (bias, ReLU6, residual add) is
  inlined into the epilogue that follows the conv tile;
* **conv** (1x1 that the pointwise rules below do not take, the stem 3x3/2): ``F_tile × X_tile``
  register tile of output channels × output columns, vectorised along the columns (contiguous in
  NCHW), reduction loops outside the tile, the outer loops fused and parallel;
* **depthwise** k×k: one channel per tile, ``rows × columns`` of outputs (one vector when the lanes
  divide the row, else the whole row of up to 4 vectors, 56 columns as 7 half vectors with AVX-512; as
  many rows as the accumulators allow), the
  k×k taps unrolled so each input row loaded serves every output row of the tile; with **stride 2**
  the conv reads even and odd columns from two planes, so every tap is a contiguous load (not a
  gather): on large maps a copy splits the padded slab with vector shuffles (a tensor intrinsic), on
  small ones the padding block scatters whole column pairs. A 56-column row split into 3.5-vector
  tiles ran 3-6x slower than these tiles;
* **pointwise 1×1, stride 1** (most of the FLOPs): when H·W is a multiple of the lanes (112, 56
  and 28 px maps at 16 lanes) the contiguous H×W map is one axis and the tile is
  ``F_tile × lanes`` pixels (a projection, reducing over more channels than it outputs: ``F_tile × 4·lanes``,
  so each input channel is read 256 contiguous bytes at a time, or with a software prefetch of the next tile
  where the map has no multiple of 4 vectors, 28×28); when a row would fill under 3/4 of its
  vectors (7×7 maps; 2×2, 1×1 at 32 px) the weights are relaid out IHWO before legalization and the tile
  vectorises over output channels, a row of pixels unrolled. 14-column rows (14/16 lanes) keep the column tile. A
  pointwise rule that does not apply falls back to the column tile (``notes["generic_conv"]``);
* **padding** of a depthwise conv is computed per parallel task, into a slab the size of the task's
  rows (never a padded copy of the whole map; inlining it puts ``if_then_else`` in the hot loop); any
  other padding is a separate, parallel block;
* **dense** (the classifier): vectorised along the output features, parallel over feature tiles;
* **pooling / other reductions**: parallel over the kept axes.

Two rules hold for every kernel, because a network is a chain of them (timed alone, each kernel
of a block summed to 2/3 of the block's time; in a network the difference was the data between them):

* **the same rows on the same core**: where the map is the larger operand (:func:`_spatial_major`: the
  112–28 px stages) parallel loops are spatial-major — the 1×1 convs over pixel tiles first, depthwise,
  padding and element-wise blocks over row bands first (:data:`SPATIAL_BANDS`) — so with 2 or 4 threads
  the thread that wrote the top rows of a map reads them back from its own L2 in the next kernel
  (channel-major loops made every 1×1 projection read half its input from the other core: the 56×56
  MBConv6 block ran 0.57 ms as a chain, 0.39 ms as the sum of its kernels); where the weights are the
  larger (14×14 and 7×7 maps with hundreds of channels) each thread takes a share of the output
  channels, so it reads a share of the weights (4 % faster networks than pixel-major everywhere);
* **weights in the order a tile reads them**: the constant weights of 1×1 convs, the stem and the
  classifier are packed channel-tile-major (:class:`WeightPacker`, as MLAS packs its GEMM operands),
  so each parallel task streams one contiguous slab instead of a stride of the channel count (the
  7×7 stage and the classifier, whose weights sit in L3 inside a network, ran 2× their alone time).

Tile widths follow the target: 16 fp32 lanes with AVX-512, 8 with AVX/AVX2, 4 with NEON/SSE.
A shape that the vector width does not divide uses a tile that divides it (e.g. 7 or 14 columns),
so every shape is computed exactly. A rule that raises for a PrimFunc leaves that function
unscheduled and records it in the notes (``notes["fallbacks"]``). GPU targets are left to the
default pipeline, which applies TVM's dlight GPU schedules.
"""
from __future__ import annotations

import logging
from typing import Any

import numpy as np

from latbench.backends.base import register_backend
from latbench.backends.tvm import TVMBackend
from latbench.devices import Device

log = logging.getLogger(__name__)

#: Version of the rules; part of the backend settings, so cached artifacts are rebuilt when it changes.
RULES_VERSION = 16


# -- target facts ---------------------------------------------------------------------------------
def vector_lanes(target: Any) -> int:
    """fp32 lanes of one vector register on ``target``: 16 (AVX-512), 8 (AVX/AVX2), 4 (NEON, SSE)."""
    from tvm.target import codegen

    def has(feature: str) -> bool:
        try:
            return bool(codegen.target_has_features(feature, target))
        except Exception:  # unknown feature for this architecture
            return False

    if has("avx512f"):
        return 16
    if has("avx2") or has("avx"):
        return 8
    return 4


def vector_registers(target: Any) -> int:
    """Architectural vector registers: 32 on AArch64 (NEON) and with AVX-512, 16 ymm/xmm otherwise."""
    triple = str(target.attrs.get("mtriple", "") or "")
    return 32 if triple.startswith(("aarch64", "arm64")) or vector_lanes(target) == 16 else 16


def register_budget(target: Any) -> int:
    """How many vector accumulators a register tile may use (the rest hold loads and broadcasts)."""
    return 12 if vector_registers(target) == 32 else 8


def _divisors_desc(n: int, limit: int) -> list[int]:
    return [d for d in range(min(n, limit), 0, -1) if n % d == 0]


#: Row bands of a map that channel-major loops (depthwise, padding, element-wise) are split into,
#: outermost, so that a parallel loop hands each thread the same rows in every kernel of a network.
SPATIAL_BANDS = 4

#: TVM keeps an allocation under this size on the stack (``LowerTVMBuiltin``).
STACK_ALLOCA_BYTES = 1024
#: How far the input-channel reduction of a conv's register tile is unrolled (by its largest divisor
#: up to this): 0.86-0.96 of the rolled loop's time on 7×7-28×28 blocks and the 1×1 feature mix, the
#: same on 56×56-224×224 ones (A/B per op, interleaved).
REDUCTION_UNROLL = 8
#: The same for a dense layer's reduction: rolled, LLVM kept the 40-wide tile (2.5 vectors) as scalars and
#: re-packed them into vectors every step (``vinsertps`` chains; the classifier 2.6× slower: 0.22 vs 0.086 ms
#: unrolled by 16, 0.092 by 8).
DENSE_UNROLL = 16
#: Vector registers a large-kernel (k ≥ 5) depthwise tile leaves free when it takes up to ``kernel`` output
#: rows (each input row serves up to ``kernel`` of them): 56-column 7×7 tiles, 7 rows, 0.70-0.84 of the time
#: of 2 rows. A value ≥ the register count turns the rule off (rows from the accumulator budget only).
DEPTHWISE_SPARE_REGISTERS = 4
#: Pixel vectors per register tile of a flat 1×1 conv that reduces over more input channels than it outputs
#: (an MBConv projection: 144 → 24 channels at 56×56), with as many fewer output channels. Inside a network
#: its input, just written by the depthwise conv, is partly back in L3, and one vector per input channel and
#: step read 64 bytes from each of 144 channel planes, a pattern no prefetcher follows: 0.120 ms in the chain
#: vs 0.061 alone. Four vectors (256 contiguous bytes per plane): 0.084 ms in the chain, the same alone.
PROJECTION_PIXEL_VECTORS = 4
#: Vector registers a strided conv's (the stem's) tile leaves free: its strided input loads are the costly
#: part of a step, so more output channels per tile amortise each (16-24 accumulators: 0.67-0.82 of the time
#: with 8-12). A value ≥ the register count turns the rule off.
STRIDED_SPARE_REGISTERS = 8


def _spatial_major(pixels: int, per_pixel: int) -> bool:
    """Whether a conv's parallel loop goes over pixels first (each thread: some rows, every channel) rather than
    output channels first (each thread: some channels, every row): pixels when the map is the larger operand. Per
    input channel a conv reads ``pixels`` inputs and ``per_pixel`` (its output channels × taps) weights; the larger
    is split between the threads. A depthwise conv counts its channels (the 1×1 expansion before it split alike)."""
    return pixels > per_pixel


def _bands(rows: int) -> int:
    """How many row bands ``rows`` rows (or row tiles) are split into: the largest divisor up to
    :data:`SPATIAL_BANDS`. With 2 or 4 threads each thread's share of a static parallel loop is then
    whole bands: the top or bottom rows of every channel, which the pixel-major 1×1 convs before and
    after it also give that thread (so a map written on one core is read back on the same core,
    from its own L2, not the other's)."""
    return _divisors_desc(rows, SPATIAL_BANDS)[0]


def column_tile(width: int, lanes: int) -> int:
    """Columns per register tile: a multiple of the vector width when it divides ``width``, else the
    whole row when it fits in two vectors, else the largest divisor of ``width`` up to ``lanes``."""
    if width % lanes == 0:
        return lanes
    if width <= 2 * lanes:
        return width
    return _divisors_desc(width, lanes)[0]


def pair_tile(width: int, lanes: int) -> int:
    """Columns per vector of a padding block that scatters a row into even and odd planes: the largest
    even divisor of the (even) padded width up to ``lanes``, so a vector holds whole column pairs. The
    whole row of 30 columns as one 30-lane vector (:func:`column_tile`'s choice at 16 lanes) ran the
    28→14 3×3 conv 3.5× slower than 10-lane tiles (2-lane pairs: 1.9×); other widths within 1 %."""
    return next(t for t in _divisors_desc(width, lanes) if t % 2 == 0)


def row_tile(extent: int, budget: int) -> int:
    """Rows (output channels) per register tile: the largest divisor of ``extent`` within ``budget``."""
    return _divisors_desc(extent, max(1, budget))[0]


# -- schedule rules -------------------------------------------------------------------------------
def _extent(sch: Any, loop: Any) -> int:
    return int(sch.get(loop).extent)


def _is_reduction(sch: Any, block: Any) -> bool:
    return any(int(iv.iter_type) == 2 for iv in sch.get(block).iter_vars)


def _buffer(region: Any) -> Any:
    # 0.27 renamed BufferRegion.buffer to TensorRegion.source
    src = getattr(region, "source", None)
    return src if src is not None else region.buffer


def _is_real_pad(sch: Any, block: Any) -> bool:
    """A padding block that adds a border (its output is larger than its input)."""
    b = sch.get(block)
    if not b.name_hint.startswith("pad") or not b.reads or not b.writes:
        return False
    src = [int(s) for s in _buffer(b.reads[0]).shape]
    dst = [int(s) for s in _buffer(b.writes[0]).shape]
    return src != dst


def _inline_elementwise(sch: Any) -> None:
    """Inline every element-wise block (BN arithmetic, trivial pads) into its consumer."""
    root = sch.get_sblock("root")
    outputs = {sch.get(b).name_hint for b in sch.get_output_blocks(root)}
    for block in sch.get_child_blocks(root):
        name = sch.get(block).name_hint
        if name in outputs or _is_reduction(sch, block) or _is_real_pad(sch, block):
            continue
        sch.compute_inline(block)


def _parallel_spatial(sch: Any, block: Any, lanes: int, vectorize: bool = True) -> None:
    """An element-wise block: outer loops fused and parallel, the innermost vectorised when it divides.
    An NCHW map is split into row bands first (:func:`_bands`), like the convs around it."""
    loops = sch.get_loops(block)
    if len(loops) == 4:
        n, c, y, _ = loops
        yb, yr = sch.split(y, [_bands(_extent(sch, y)), None])
        sch.reorder(n, yb, c, yr)
        sch.parallel(sch.fuse(n, yb, c))
    elif len(loops) >= 2:
        outer = sch.fuse(*loops[:-1]) if len(loops) > 2 else loops[0]
        sch.parallel(outer)
    if vectorize:
        _vectorize_last(sch, block, lanes)


def _vectorize_last(sch: Any, block: Any, lanes: int) -> None:
    """The innermost loop vectorised (by its widest tile that divides it, :func:`column_tile`)."""
    last = sch.get_loops(block)[-1]
    ext = _extent(sch, last)
    if ext > 1:
        tile = column_tile(ext, lanes)
        if tile != ext:
            _, last = sch.split(last, [None, tile])
        sch.vectorize(last)


def _root_allocated(sch: Any, buf: Any) -> bool:
    """Whether ``buf`` is an intermediate of the function (not one of its parameters)."""
    return any(b.same_as(buf) for b in sch.get(sch.get_sblock("root")).alloc_buffers)


class WeightPacker:
    """Packs the constant weights a register tile reads into the order it reads them.

    A rule asks for ``(f, c, ...) -> (f // tile, c, ..., f % tile)`` on a weight: the PrimFunc's
    parameter takes the packed layout (``transform_layout`` on a parameter), every call site's
    constant is packed with numpy by :func:`pack_array`, so each parallel task streams one contiguous
    slab of weights (as ONNX Runtime's MLAS packs its GEMM operands) instead of a stride of the
    output-channel count (what made the 7×7 stage and the classifier twice as slow inside a network,
    with their weights in L3, as alone). Only parameters that are a constant at every call site are
    packed (``packable``: their positions)."""

    def __init__(self, sch: Any, params: list[Any], packable: frozenset[int]) -> None:
        self.sch, self.params, self.packable = sch, params, packable
        self.maps: dict[int, Any] = {}

    def __call__(self, block: Any, read: int, index_map: Any) -> bool:
        buf = _buffer(self.sch.get(block).reads[read])
        pos = next((i for i, p in enumerate(self.params) if p.same_as(buf)), None)
        if pos is None or pos not in self.packable or pos in self.maps:
            return False
        self.sch.transform_layout(block, ("read", read), index_map)
        self.maps[pos] = index_map
        return True


def pack_array(array: np.ndarray, index_map: Any, shape: tuple[int, ...]) -> np.ndarray:
    """``array`` in the layout ``index_map`` gives (a lambda of //, % and + on indices, as the rules write it)."""
    out = np.zeros(shape, dtype=array.dtype)
    out[tuple(index_map(*np.indices(array.shape)))] = array
    return out


def _tile_major(tile: int) -> Any:
    """The weight layout of a register tile of ``tile`` output channels: channel tile first, its lanes last."""
    return lambda f, *rest: (f // tile, *rest, f % tile)


def _pointwise_kind(sch: Any, conv: Any) -> str | None:
    """``"nchw"`` / ``"ihwo"`` for a stride-1 1×1 conv (by its weight layout), ``None`` otherwise.

    Stride 1 and no padding: the input map has the output's size. The weight layout is told by
    its last index: the output channel (IHWO, see :func:`relayout_pointwise`) or a kernel tap (OIHW)."""
    b = sch.get(conv)
    n, f, y, x, rc, ry, rx = b.iter_vars
    if int(ry.dom.extent) != 1 or int(rx.dom.extent) != 1 or int(rc.dom.extent) == 1 or len(b.reads) < 2:
        return None
    data, weight = (_buffer(r) for r in b.reads[-2:])
    if [int(v) for v in data.shape[2:]] != [int(y.dom.extent), int(x.dom.extent)]:
        return None
    last = b.reads[-1].region[-1].min
    return "ihwo" if last.same_as(f.var) else "nchw" if [int(v) for v in weight.shape[2:]] == [1, 1] else None


def _decompose_unrolled(sch: Any, block: Any, loop: Any, limit: int | None = None) -> int:
    """Split the init off ``block``'s reduction at its outermost reduction ``loop``, that loop unrolled by
    its largest divisor up to ``limit`` (returned): fewer loop steps per accumulator update, and LLVM
    keeps a dense tile's accumulators as vectors (see :data:`DENSE_UNROLL`)."""
    u = _divisors_desc(_extent(sch, loop), limit or REDUCTION_UNROLL)[0]
    if u > 1:
        outer, inner = sch.split(loop, [None, u])
        sch.unroll(inner)
        sch.decompose_reduction(block, outer)
    else:
        sch.decompose_reduction(block, loop)
    return u


def _no_pack(block: Any, read: int, index_map: Any) -> bool:
    return False


def _prefetch_ahead(sch: Any, conv: Any, position: int, unrolled: int, pixels: int) -> None:
    """Annotate the innermost input-channel loop of ``conv`` (loop ``position``, split in two when unrolled) for a
    prefetch :data:`PREFETCH_TILES_AHEAD` tiles of ``pixels`` ahead (see :func:`insert_prefetches`)."""
    if PREFETCH_TILES_AHEAD > 0:
        loop = sch.get_loops(conv)[position + (1 if unrolled > 1 else 0)]
        sch.annotate(loop, PREFETCH_ANNOTATION, pixels * PREFETCH_TILES_AHEAD)


def projection_vectors(vectors: int, in_channels: int, out_channels: int) -> int:
    """Pixel vectors per register tile of a flat 1×1 conv: up to :data:`PROJECTION_PIXEL_VECTORS` (dividing the
    map's ``vectors``) when it reduces over more channels than it outputs (an MBConv projection), else 1."""
    if in_channels <= out_channels:
        return 1
    return _divisors_desc(vectors, PROJECTION_PIXEL_VECTORS)[0]


def _schedule_pointwise_flat(sch: Any, conv: Any, lanes: int, budget: int, pack: Any = _no_pack) -> str:
    """1×1 stride-1 conv whose H·W is a multiple of the lanes: the contiguous H×W map is one axis,
    a ``F_tile × lanes`` register tile (weights broadcast, pixels in the vector), so 28, 14 or 7
    columns never leave lanes idle."""
    _, f, y, x, *_ = sch.get_loops(conv)
    width = _extent(sch, x)
    consumers = sch.get_consumers(conv)
    out = _buffer(sch.get(conv).writes[0])
    if consumers and not _root_allocated(sch, out):
        raise ValueError("pointwise conv writes a parameter that others read")
    if consumers:
        sch.transform_layout(conv, ("write", 0), lambda n, f, y, x: (n, f, y * width + x))
    sch.transform_block_layout(conv, lambda n, f, y, x, rc, ry, rx: (n, f, y * width + x, rc, ry, rx))
    for cons in consumers:
        sch.transform_block_layout(cons, lambda n, f, y, x: (n, f, y * width + x))
    n, f, p, *red = sch.get_loops(conv)
    spatial = _spatial_major(_extent(sch, p), _extent(sch, f))
    pv = projection_vectors(_extent(sch, p) // lanes, _extent(sch, red[0]), _extent(sch, f))
    prefetch = _extent(sch, red[0]) > _extent(sch, f)
    ft = row_tile(_extent(sch, f), budget // pv)
    pack(conv, len(sch.get(conv).reads) - 1, _tile_major(ft))
    po, pv_loop, pi = sch.split(p, [None, pv, lanes])
    fo, fi = sch.split(f, [None, ft])
    order = (po, fo) if spatial else (fo, po)
    sch.reorder(n, *order, *red, fi, pv_loop, pi)
    outer = sch.fuse(n, *order)
    sch.parallel(outer)
    sch.vectorize(pi)
    sch.unroll(pv_loop)
    sch.unroll(fi)
    for cons in consumers:
        sch.reverse_compute_at(cons, outer)
        sch.vectorize(sch.get_loops(cons)[-1])
    unrolled = _decompose_unrolled(sch, conv, red[0])
    if pv == 1 and prefetch:  # a projection reading one vector per input plane and step
        _prefetch_ahead(sch, conv, 1, unrolled, lanes)
    return f"pointwise-flat {ft}x{lanes}" if pv == 1 else f"pointwise-flat {ft}x{pv}x{lanes}"


def _schedule_pointwise_channels(sch: Any, conv: Any, lanes: int, budget: int, pack: Any = _no_pack) -> str:
    """1×1 stride-1 conv with IHWO weights (H·W not a multiple of the lanes): output channels in
    the vector, a row of pixels (broadcast inputs) unrolled; the tile is kept pixel-major, so the
    accumulators stay in registers, and the epilogue writes it back to NCHW."""
    _, f, y, x, *_ = sch.get_loops(conv)
    nf, width = _extent(sch, f), _extent(sch, x)
    ft = lanes if nf % lanes == 0 else lanes // 2 if nf % (lanes // 2) == 0 else 0
    if ft < 4:
        raise ValueError(f"{nf} output channels are no multiple of a vector")
    pack(conv, len(sch.get(conv).reads) - 1, lambda c, h, w, f: (f // ft, c, h, w, f % ft))
    consumers = sch.get_consumers(conv)
    if consumers and _root_allocated(sch, _buffer(sch.get(conv).writes[0])):
        sch.transform_layout(conv, ("write", 0), lambda n, f, y, x: (n, y, x, f))
    n, f, y, x, *red = sch.get_loops(conv)
    xt = _divisors_desc(width, budget)[0]
    xo, xi = sch.split(x, [None, xt])
    fo, fi = sch.split(f, [None, ft])
    order = (y, fo) if _spatial_major(_extent(sch, y) * width, nf) else (fo, y)
    sch.reorder(n, *order, xo, *red, xi, fi)
    sch.parallel(sch.fuse(n, *order))
    sch.vectorize(fi)
    sch.unroll(xi)
    for cons in consumers:
        sch.reverse_compute_at(cons, xo)
    _decompose_unrolled(sch, conv, red[0])
    return f"pointwise-channels {ft}x{xt}"


def depthwise_tile(width: int, height: int, lanes: int, budget: int, kernel: int = 3,
                   registers: int = 0, halves: bool = True) -> tuple[int, int]:
    """(columns, rows) of a depthwise register tile: one vector when the lanes divide the row (112, 56
    at 8 lanes), else the whole row when it fits in 4 vectors (56, 28, 14, 7 at 16 lanes); then as many
    output rows as the accumulator budget allows (a divisor of the height), so each loaded input row
    serves several outputs. A large kernel may take up to ``kernel`` rows of all registers but
    :data:`DEPTHWISE_SPARE_REGISTERS` (each input row serves up to ``kernel`` output rows). A row computed in
    half vectors (:func:`row_pieces`, where ``halves``) takes as many rows as the registers hold (less the spare),
    half that for 7×7 (4 rows × 7 halves: 1.10× the 3.5-vector tile's time, 2 rows: 0.92×). A row that is
    neither (wide, odd) keeps one row of its widest divisor."""
    if width % lanes == 0:
        xt = lanes
    elif width <= 4 * lanes:
        xt = width
    else:
        return _divisors_desc(width, 4 * lanes)[0], 1
    vectors = -(-xt // lanes)
    spare = registers - DEPTHWISE_SPARE_REGISTERS
    rows = max(budget // vectors, min(kernel, spare // vectors) if kernel >= 5 and spare > 0 else 0)
    pieces = row_pieces(xt, lanes) if halves else vectors
    if pieces > vectors:  # half vectors: as many accumulators as the registers hold less the spare ones; 7×7: half
        accumulators = max(1, (registers or 2 * budget) - DEPTHWISE_SPARE_REGISTERS) // (2 if kernel >= 7 else 1)
        rows = min(rows, max(1, accumulators // pieces))
    return xt, _divisors_desc(height, max(1, rows))[0]


def row_pieces(columns: int, lanes: int) -> int:
    """Vectors a depthwise tile's row of ``columns`` is computed in: half vectors when the lanes do not divide it but
    half the lanes do and a half is a whole 8-lane register (56 columns at 16 lanes: 7 × 8 lanes, not 3.5 × 16,
    which LLVM legalized with spills and ``vinsertf64x4`` shuffles), else whole vectors. Whole ops, interleaved:
    the 56×56 stride-1 MBConv blocks 0.89-0.92 of their time, 112→56 7×7 0.83-0.85; a conv reading shuffled planes
    keeps whole vectors (112→56 5×5 expand 6: 1.07). Measured with AVX-512 only (the 8-lane case, 28 columns as
    7 × 4 lanes, is untimed and keeps its 3.5 vectors)."""
    if lanes >= 16 and columns > lanes and columns % lanes and columns % (lanes // 2) == 0:
        return columns // (lanes // 2)
    return -(-columns // lanes)


def _align_slab(sch: Any, block: Any, step: int) -> int:
    """Rows of a per-task slab (a padding slab, or its even/odd planes) start on a multiple of ``step``
    (a vector, or a whole de-interleave chunk), and the slab is never a stack array: under
    :data:`STACK_ALLOCA_BYTES` LLVM scalarises it into registers once every tap is unrolled, which ran a
    5×5 depthwise conv on 7×7 and 14×14 maps 8-15× slower (on the workspace: as fast as the rest).
    Returns the row multiple used."""
    buf = _buffer(sch.get(block).writes[0])
    rows, *inner = (_extent(sch, lp) for lp in sch.get_loops(block)[1:])
    planes = int(buf.shape[-2]) if len(buf.shape) == 5 else 1  # de-interleaved: even and odd planes of a row
    row = int(np.prod(inner)) // planes
    factor = step
    while 4 * rows * planes * -(-row // factor) * factor < STACK_ALLOCA_BYTES:
        factor += step
    sch.storage_align(block, 0, len(buf.shape) - 2, factor, 0)
    return factor


#: A stride-2 depthwise conv's planes are split by shuffles from a slab of its own where a channel's padded
#: map holds at least this many floats (the 112→56 and 56→28 convs at 224, each alone: 0.64-1.03 of the time
#: of scattered stores, median 0.73); below, the shuffled copy was slower (14→7: 1.45-1.72 with 16 lanes,
#: 28→14 1.19 with 8: a second per-task buffer for a few hundred floats).
SHUFFLE_SLAB_FLOATS = 2048
#: ... and whose kernel is at most this wide: a 7×7 conv's 49 taps outweigh the copy (0.95-1.02 alone), and
#: the shuffled copy's one band per channel cost its whole op 1.10 of the banded scattered one's time in
#: the VM (112→56 and 56→28, expand 6), where 3×3 and 5×5 ops took 0.82-1.0.
SHUFFLE_MAX_KERNEL = 5


def _deinterleave_stride2(sch: Any, conv: Any, pad: Any | None) -> tuple[str | None, Any | None]:
    """A stride-2 depthwise conv reads every other padded column: its vector loads would be gathers.
    Instead it reads even and odd column planes ((c, y, x) → (c, y, x % 2, x // 2)), so tap ``kx`` of 16
    outputs is one contiguous load of plane ``kx % 2``. Returns how the planes are written and the block
    that copies them:

    * ``"shuffled"`` (a channel's padded map of at least :data:`SHUFFLE_SLAB_FLOATS`, a kernel up to
      :data:`SHUFFLE_MAX_KERNEL`): the task pads its rows into a slab as for stride 1, then a copy splits
      the slab into the planes, two vector loads and two shuffles per ``2 × lanes`` columns
      (:func:`deinterleave_intrin`); the copy's block is returned;
    * ``"scattered"``: the padding block writes the planes itself (its stores go column by column);
    * ``None``: not a stride-2 conv on a padded map.

    Measured and not kept (each kernel alone, 9 interleaved rounds, 2 threads): the padding block writing
    plane by plane (strided loads, which TVM's LLVM codegen emits lane by lane: 0.41-1.68 of the time).
    A shuffled copy keeps one row band per channel: TVM 0.27's ``blockize`` (under ``tensorize``) rewrites
    the overlapping rows of row bands (band · 28 + r, r < 29) as band · 29 + r; and a copy tensorized
    before ``compute_at`` was placed *after* the conv reading it (wrong results; every build's check
    against PyTorch caught it)."""
    if pad is None:
        return None, None
    out_w = _extent(sch, sch.get_loops(conv)[3])
    kx = _extent(sch, sch.get_loops(conv)[-1])
    padded = _buffer(sch.get(pad).writes[0])
    pad_h, pad_w = int(padded.shape[-2]), int(padded.shape[-1])
    if out_w < 2 or pad_w % 2 or (pad_w - kx) // (out_w - 1) != 2:  # an odd padded width: no two equal planes
        return None, None
    if pad_h * pad_w < SHUFFLE_SLAB_FLOATS or kx > SHUFFLE_MAX_KERNEL:
        sch.transform_layout(pad, ("write", 0), lambda n, c, y, x: (n, c, y, x % 2, x // 2))
        return "scattered", None
    index = next(i for i, r in enumerate(sch.get(conv).reads) if _buffer(r).same_as(padded))
    planes = sch.cache_read(conv, index, "global")
    sch.transform_block_layout(planes, lambda n, c, y, x: (n, c, y, x // 2, x % 2))
    sch.transform_layout(planes, ("write", 0), lambda n, c, y, x: (n, c, y, x % 2, x // 2))
    return "shuffled", planes


def deinterleave_intrin(lanes: int) -> str:
    """The name of a tensor intrinsic (registered on first use) that splits ``2 × lanes`` contiguous floats
    into ``lanes`` even and ``lanes`` odd ones: two vector loads and two shuffles (AVX-512 ``vpermt2ps``,
    NEON ``uzp1/uzp2``), where TVM's own code for the same copy loads or stores each strided lane alone."""
    from tvm import s_tir
    from tvm.script import tirx as T

    name = f"latbench_deinterleave_f32x{lanes}"
    if s_tir.TensorIntrin.get(name, allow_missing=True) is not None:
        return name
    pairs = T.int64(2 * lanes)
    width = T.int64(lanes)

    @T.prim_func(s_tir=True)
    def desc(src: T.Buffer((pairs,), "float32", offset_factor=1),
             dst: T.Buffer((T.int64(2), width), "float32", offset_factor=1, strides=[T.int64(), T.int64(1)])) -> None:
        with T.sblock("root"):
            T.reads(src[0:pairs])
            T.writes(dst[0:2, 0:width])
            for j, p in T.grid(width, T.int64(2)):
                with T.sblock("update"):
                    vj, vp = T.axis.remap("SS", [j, p])
                    dst[vp, vj] = src[vj * T.int64(2) + vp]

    @T.prim_func(s_tir=True)
    def impl(src: T.Buffer((pairs,), "float32", offset_factor=1),
             dst: T.Buffer((T.int64(2), width), "float32", offset_factor=1, strides=[T.int64(), T.int64(1)])) -> None:
        with T.sblock("root"):
            T.reads(src[0:pairs])
            T.writes(dst[0:2, 0:width])
            lo = src.vload([0], f"float32x{lanes}")
            hi = src.vload([lanes], f"float32x{lanes}")
            dst[0, T.ramp(0, 1, lanes)] = T.Shuffle([lo, hi], [2 * i for i in range(lanes)])
            dst[1, T.ramp(0, 1, lanes)] = T.Shuffle([lo, hi], [2 * i + 1 for i in range(lanes)])

    s_tir.TensorIntrin.register(name, desc, impl)
    return name


def _chunked(plane: int, lanes: int) -> int:
    """A plane row rounded up to whole ``lanes`` (the copy's last chunk of a row runs past its end, into
    padding of the planes' and the slab's rows that no tap reads)."""
    return -(-plane // lanes) * lanes


def _tensorize_deinterleave(sch: Any, planes: Any, lanes: int) -> Any:
    """The plane copy of a task's slab, ``lanes`` column pairs at a time (:func:`deinterleave_intrin`);
    returns the copy's new block (the tensorized one, which has none of the old one's annotations)."""
    name = sch.get(planes).name_hint
    _, ji = sch.split(sch.get_loops(planes)[-2], [None, lanes], disable_predication=True)
    sch.tensorize(ji, deinterleave_intrin(lanes))
    return sch.get_sblock(f"{name}_o")


def _schedule_conv(sch: Any, conv: Any, lanes: int, budget: int, pad: Any | None = None,
                   pack: Any = _no_pack, registers: int = 16) -> str:
    n, f, y, x, *red = sch.get_loops(conv)
    if len(red) != 3:
        raise ValueError(f"conv block with {len(red)} reduction loops")
    consumers = sch.get_consumers(conv)
    width = _extent(sch, x)
    depthwise = _extent(sch, red[0]) == 1
    taps = 1 if depthwise else _extent(sch, red[1]) * _extent(sch, red[2])
    spatial = _spatial_major(_extent(sch, y) * width, _extent(sch, f) * taps)
    split, planes = None, None
    if depthwise:
        # No input reuse across channels: one channel per tile, a register tile of output rows ×
        # columns (the k×k taps unrolled), stride-2 inputs de-interleaved so loads stay contiguous.
        split, planes = _deinterleave_stride2(sch, conv, pad)
        xt, yt = depthwise_tile(width, _extent(sch, y), lanes, budget, _extent(sch, red[1]), registers,
                                halves=split != "shuffled")
        ft = 1
    else:
        xt, yt = column_tile(width, lanes), 1
        # A strided conv (the stem) loads its input vectors strided, the costly part of a step: more output
        # channels per tile amortise each load (16-24 accumulators: the stem 0.67-0.82 of the time with 8-12).
        data = _buffer(sch.get(conv).reads[0])
        strided = len(data.shape) == 4 and int(data.shape[2]) >= 2 * _extent(sch, y)
        tile_budget = max(budget, registers - STRIDED_SPARE_REGISTERS) if strided else budget
        ft = row_tile(_extent(sch, f), tile_budget // -(-xt // lanes))
    if not depthwise:
        pack(conv, len(sch.get(conv).reads) - 1, _tile_major(ft))
    xo, xi = sch.split(x, [None, xt])
    fo, fi = sch.split(f, [None, ft])
    yo, yi = sch.split(y, [None, yt])
    if depthwise:
        bands = _bands(_extent(sch, yo)) if spatial and split != "shuffled" else 1  # see _deinterleave_stride2
        yb, yo = sch.split(yo, [bands, None])
        sch.reorder(n, yb, fo, yo, xo, *red, fi, yi, xi)
        outer = sch.fuse(n, yb, fo)
        sch.parallel(outer)
        chunk = 0
        if planes is not None:  # stride 2: the slab's even and odd columns, copied into two planes
            sch.compute_at(planes, outer)
            chunk = _chunked(_extent(sch, sch.get_loops(planes)[-2]), lanes)
        if pad is not None:  # the task's rows of its channel, padded into a slab of its own
            sch.compute_at(pad, outer)
            _align_slab(sch, pad, 2 * chunk or lanes)
            if split == "scattered":  # whole even/odd column pairs per vector (see pair_tile)
                last = sch.get_loops(pad)[-1]
                _, last = sch.split(last, [None, pair_tile(_extent(sch, last), lanes)])
                sch.vectorize(last)
            else:  # the whole padded row as one vector (its 2-lane tiles were 1.4x slower)
                sch.vectorize(sch.get_loops(pad)[-1])
        if planes is not None:
            factor = _align_slab(sch, planes, chunk)  # sized here: the tensorized block loses the annotation
            planes = _tensorize_deinterleave(sch, planes, lanes)
            sch.storage_align(planes, 0, 3, factor, 0)
    else:
        order = (yo, fo) if spatial else (fo, yo)
        sch.reorder(n, *order, xo, *red, yi, fi, xi)
        sch.parallel(sch.fuse(n, *order))
    if depthwise and split != "shuffled" and row_pieces(xt, lanes) > -(-xt // lanes):  # see row_pieces
        xu, xi = sch.split(xi, [None, lanes // 2])
        sch.unroll(xu)
    sch.vectorize(xi)
    sch.unroll(fi)
    sch.unroll(yi)
    if depthwise:
        sch.unroll(red[1])
        sch.unroll(red[2])
    for cons in consumers:  # the fused epilogue (BN, ReLU6, residual) right after the tile
        sch.reverse_compute_at(cons, xo)
        sch.vectorize(sch.get_loops(cons)[-1])
    # After vectorize: decomposing first makes vectorize reject the init block ("compact dataflow").
    _decompose_unrolled(sch, conv, red[0])  # a depthwise conv's channel reduction has extent 1: not unrolled
    if depthwise:
        return f"depthwise {yt}x{xt}" + (f" s2-{split}" if split else "")
    return f"conv {ft}x{xt}"


def _schedule_dense(sch: Any, mm: Any, lanes: int, pack: Any = _no_pack) -> str:
    i, j, k = sch.get_loops(mm)
    n = _extent(sch, j)
    consumers = sch.get_consumers(mm)
    # The widest tile of whole (or half) vectors up to 4 registers that divides the feature count.
    step = lanes if n % lanes == 0 else max(1, lanes // 2)
    multiple = [t for t in range(4 * lanes, 0, -step) if t % step == 0 and n % t == 0]
    jt = multiple[0] if multiple and step > 1 else column_tile(n, lanes)
    pack(mm, 1, lambda k, n: (n // jt, k, n % jt))
    jo, ji = sch.split(j, [None, jt])
    sch.reorder(i, jo, k, ji)
    sch.parallel(sch.fuse(i, jo))
    sch.vectorize(ji)
    for cons in consumers:
        sch.reverse_compute_at(cons, sch.get_loops(mm)[0])
        sch.vectorize(sch.get_loops(cons)[-1])
    ku = _decompose_unrolled(sch, mm, k, DENSE_UNROLL)
    return f"dense {jt}" + (f" k-unroll {ku}" if ku > 1 else "")


def _schedule_pool(sch: Any, red: Any) -> str:
    loops = sch.get_loops(red)
    kept = [lp for lp, iv in zip(loops, sch.get(red).iter_vars) if int(iv.iter_type) == 0]
    if kept:
        sch.parallel(sch.fuse(*kept) if len(kept) > 1 else kept[0])
    return "pool"


def _padding_of(sch: Any, conv: Any) -> Any | None:
    """The real padding block whose output the conv reads (None if it reads its input directly)."""
    for producer in sch.get_producers(conv):
        if _is_real_pad(sch, producer):
            return producer
    return None


def schedule_primfunc(func: Any, target: Any, use_pointwise: bool = True,
                      packable: frozenset[int] = frozenset()) -> tuple[Any, str, dict[int, Any]]:
    """Apply latbench's rules to one PrimFunc (:func:`rule_schedule`) and its prefetches
    (:func:`insert_prefetches`); returns the scheduled function, the rule used and the packed weights."""
    sch, rule, maps = rule_schedule(func, target, use_pointwise, packable)
    return insert_prefetches(sch.mod["main"]), rule, maps


def rule_schedule(func: Any, target: Any, use_pointwise: bool = True,
                  packable: frozenset[int] = frozenset()) -> tuple[Any, str, dict[int, Any]]:
    """Apply latbench's rules to one PrimFunc; returns the schedule (whose ``trace`` replays them: what
    ``tvm-tuned`` seeds MetaSchedule with; the prefetches are a pass after it), the rule used and
    the weights it packed (parameter position → index map; see :class:`WeightPacker`): only
    parameters in ``packable`` are, and the caller must pack their constants with :func:`pack_array`.

    ``use_pointwise=False`` schedules 1×1 convs with the generic conv rule (what
    :func:`apply_rules` retries when a pointwise rule does not apply). Raises whatever TVM raises
    when a rule does not apply; :func:`apply_rules` then keeps the unscheduled function.
    """
    from tvm import s_tir

    lanes, budget, registers = vector_lanes(target), register_budget(target), vector_registers(target)
    sch = s_tir.Schedule(func)
    pack = WeightPacker(sch, list(func.params), packable)
    _inline_elementwise(sch)
    root = sch.get_sblock("root")
    rules: list[str] = []
    for block in sch.get_child_blocks(root):
        b = sch.get(block)
        if _is_reduction(sch, block):
            n_spatial = sum(int(iv.iter_type) == 0 for iv in b.iter_vars)
            n_red = len(b.iter_vars) - n_spatial
            if n_spatial == 4 and n_red == 3:
                kind = _pointwise_kind(sch, block) if use_pointwise else None
                height_width = _extent(sch, sch.get_loops(block)[2]) * _extent(sch, sch.get_loops(block)[3])
                if kind == "ihwo":
                    rules.append(_schedule_pointwise_channels(sch, block, lanes, budget, pack))
                elif kind == "nchw" and height_width % lanes == 0:
                    rules.append(_schedule_pointwise_flat(sch, block, lanes, budget, pack))
                else:
                    rules.append(_schedule_conv(sch, block, lanes, budget, _padding_of(sch, block), pack,
                                                registers))
            elif n_spatial == 2 and n_red == 1 and len(b.reads) == 2:
                rules.append(_schedule_dense(sch, block, lanes, pack))
            else:
                rules.append(_schedule_pool(sch, block))
    # Whatever is still at the root and not scheduled yet (pads, pooling epilogues, element-wise funcs).
    for block in sch.get_child_blocks(root):
        loops = sch.get_loops(block)
        if _is_reduction(sch, block) or not loops:
            continue
        kinds = {sch.get(lp).kind for lp in loops}
        if any(int(k) != 0 for k in kinds):  # already parallel/vectorised by a rule above
            continue
        _parallel_spatial(sch, block, lanes)
        rules.append("elementwise")
    return sch, "+".join(rules) or "none", pack.maps


#: Loop annotation (pixels ahead) asking :func:`insert_prefetches` for a software prefetch of the conv input.
PREFETCH_ANNOTATION = "latbench.prefetch_ahead"
#: How many pixel tiles ahead a projection with one vector per input plane prefetches its input. Each step of its
#: reduction reads one 64-byte line from each of hundreds of channel planes (the 28×28 blocks: 240 planes), more
#: streams than the hardware prefetchers track, so inside a network every line came from L3 on demand: the 28×28
#: projections 0.070 → 0.055 ms in the chain with a prefetch one tile ahead (``llvm.prefetch``); the 28×28 MBConv
#: ops alone 0.89-0.94 of their time, networks 0.988. The 14×14 column-tiled projections (376 KB maps, in L2) got
#: nothing from it (1.00-1.06 alone) and do not prefetch. 0 turns prefetching off.
PREFETCH_TILES_AHEAD = 1


def insert_prefetches(func: Any) -> Any:
    """Start each loop annotated with :data:`PREFETCH_ANNOTATION` (= pixels ahead) with a prefetch of the input
    that its conv's update block reads that many pixels ahead: the block's input index with the block bound as in
    the loop's first iteration of every loop inside, the vectorised one moved ahead by the annotation. The last
    tile's prefetch points past its plane (into the next, or past the buffer): a prefetch never faults (x86
    ``prefetcht0``, AArch64 ``prfm``), so no bound is needed. Built with ``tvm_ffi.structural_map`` (TVM 0.27
    has no Python ``stmt_functor``)."""
    import tvm_ffi
    from tvm import s_tir, tirx

    def first_update(body: Any) -> tuple[Any, list[Any]] | None:
        loops: list[Any] = []
        found: list[Any] = []

        def visit(node: Any) -> Any:
            if found:
                return tvm_ffi.WalkResult.SKIP
            if isinstance(node, tirx.For):
                loops.append(node)
            elif isinstance(node, s_tir.SBlockRealize) and node.block.name_hint.endswith("_update"):
                found.append(node)
            return None

        tvm_ffi.structural_walk(body, [(tirx.For, visit), (s_tir.SBlockRealize, visit)], order="pre")
        return (found[0], loops) if found else None

    def rewrite(node: Any) -> Any:
        if PREFETCH_ANNOTATION not in node.annotations:
            return node
        ahead = int(node.annotations[PREFETCH_ANNOTATION])
        rest = {k: v for k, v in node.annotations.items() if k != PREFETCH_ANNOTATION}
        hit = first_update(node.body)
        if hit is None:
            return tirx.For(node.loop_var, node.min, node.extent, node.kind, node.body, node.thread_binding, rest)
        realize, loops = hit
        values = {}
        for lp in loops:
            vectorized = int(lp.kind) == int(tirx.ForKind.VECTORIZED)
            values[lp.loop_var] = tirx.const(ahead if vectorized else 0, str(lp.min.ty))
        bound = {iv.var: tvm_ffi.structural_map(v, (tirx.Var, lambda x: values.get(x, x)))
                 for iv, v in zip(realize.block.iter_vars, realize.iter_values)}
        data = realize.block.reads[1]  # [accumulator, input, weight]
        index = [tvm_ffi.structural_map(r.min, (tirx.Var, lambda x: bound.get(x, x))) for r in data.region]
        prefetch = tirx.Evaluate(tirx.call_llvm_intrin("void", "llvm.prefetch.p0",
                                                       tirx.address_of(tirx.BufferLoad(_buffer(data), index)),
                                                       tirx.IntImm("int32", 0), tirx.IntImm("int32", 3),
                                                       tirx.IntImm("int32", 1)))
        return tirx.For(node.loop_var, node.min, node.extent, node.kind, tirx.SeqStmt([prefetch, node.body]),
                        node.thread_binding, rest)

    return func.with_body(tvm_ffi.structural_map(func.body, (tirx.For, rewrite)))


def parallel_extents(func: Any) -> list[int]:
    """The extents of a PrimFunc's parallel loops (each once, in block order)."""
    import tvm
    from tvm import s_tir

    sch = s_tir.Schedule(func)
    loops: list[Any] = []
    for block in sch.get_child_blocks(sch.get_sblock("root")):
        for lp in sch.get_loops(block):
            loop = sch.get(lp)
            if loop.kind == tvm.tirx.ForKind.PARALLEL and not any(loop.same_as(o) for o in loops):
                loops.append(loop)
    return [int(lp.extent) for lp in loops]


def parallel_speedup_bound(extent: int, threads: int) -> float:
    """The speed-up over one thread a parallel loop of ``extent`` equal tasks allows on ``threads`` threads
    (TVM hands each thread a contiguous chunk of ``ceil(extent / threads)`` tasks)."""
    return extent / -(-extent // threads) if extent > 0 else 1.0


def is_scheduled(func: Any) -> bool:
    """Whether a PrimFunc is already scheduled (by a rule, dlight or a tuning record)."""
    attrs = func.attrs
    return attrs is not None and "tirx.is_scheduled" in attrs and bool(attrs["tirx.is_scheduled"])


def _last_line(exc: Exception) -> str:
    msg = str(exc).strip().splitlines()
    return (msg[-1] if msg else type(exc).__name__)[:300]


def _call_tir_sites(mod: Any) -> list[Any]:
    import tvm
    from tvm import relax

    call_tir, sites = tvm.ir.Op.get("relax.call_tir"), []
    for func in mod.functions.values():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(
                func.body, lambda e: sites.append(e) if isinstance(e, relax.Call) and e.op == call_tir else None)
    return sites


def constant_params(mod: Any) -> dict[str, frozenset[int]]:
    """Per PrimFunc, the positions of the parameters that every ``call_tir`` of it passes a constant."""
    import tvm

    found: dict[str, frozenset[int]] = {}
    for call in _call_tir_sites(mod):
        name = call.args[0].name_hint
        here = frozenset(i for i, a in enumerate(call.args[1].fields) if isinstance(a, tvm.ir.expr.Constant))
        found[name] = found[name] & here if name in found else here
    return found


def pack_constants(mod: Any, packs: dict[str, dict[int, Any]]) -> Any:
    """Every ``call_tir`` of a PrimFunc whose weights a rule packed passes them packed (numpy, once).

    Returns a new module: a packed function's signature changed, and a GlobalVar's type (what its
    callers are checked against) is set once, so each packed function gets a new GlobalVar of its name."""
    import tvm
    from tvm import relax

    call_tir = tvm.ir.Op.get("relax.call_tir")
    shapes = {gv.name_hint: [tuple(int(d) for d in p.shape) for p in mod[gv].params]
              for gv in mod.functions if gv.name_hint in packs}
    renamed = {}
    for gv, func in mod.functions.items():
        if gv.name_hint in packs:
            renamed[gv.name_hint] = tvm.ir.GlobalVar(gv.name_hint)
            relax.expr._update_type(renamed[gv.name_hint], func.ty)  # what BlockBuilder.add_func does

    @relax.expr_functor.mutator
    class _Pack(relax.PyExprMutator):  # type: ignore[misc]
        def visit_call_(self, call: Any) -> Any:
            call = super().visit_call_(call)
            name = call.args[0].name_hint if call.op == call_tir else None
            if name not in packs:
                return call
            fields = list(call.args[1].fields)
            for pos, index_map in packs[name].items():
                fields[pos] = relax.const(pack_array(fields[pos].value.numpy(), index_map, shapes[name][pos]))
            return relax.Call(call.op, [renamed[name], relax.Tuple(fields), *call.args[2:]], call.attrs,
                              call.ty_args)

    mutator = _Pack(mod)
    functions = {renamed.get(gv.name_hint, gv): mutator.visit_expr(func) if isinstance(func, relax.Function) else func
                 for gv, func in mod.functions.items()}
    return tvm.IRModule(functions, attrs=mod.attrs, global_infos=mod.global_infos)


def apply_rules(mod: Any, target: Any) -> tuple[Any, dict[str, Any]]:
    """Schedule every PrimFunc of a legalized, fused Relax module; returns it and notes.

    Constant weights are packed for the register tiles that read them (:class:`WeightPacker`), and
    the module's constants with them; a PrimFunc without a Relax caller in ``mod`` keeps its layouts."""
    import tvm

    notes: dict[str, Any] = {"rules": {}, "fallbacks": [], "vector_lanes": vector_lanes(target), "parallel": {}}
    constant = constant_params(mod)
    packs: dict[str, dict[int, Any]] = {}
    for gv, func in list(mod.functions.items()):
        if not isinstance(func, tvm.tirx.PrimFunc) or is_scheduled(func):
            continue
        name = gv.name_hint
        packable = constant.get(name, frozenset())
        try:
            try:
                new, rule, packed = schedule_primfunc(func, target, packable=packable)
            except Exception as exc:  # noqa: BLE001 - a pointwise rule did not apply: the generic conv rule
                new, rule, packed = schedule_primfunc(func, target, use_pointwise=False, packable=packable)
                notes.setdefault("generic_conv", []).append({"func": name, "error": _last_line(exc)})
                log.info("pointwise rule failed for %s, using the generic conv rule: %s", name, exc)
        except Exception as exc:  # noqa: BLE001 - any TVM error means "rule does not apply"
            notes["fallbacks"].append({"func": name, "error": _last_line(exc)})
            log.warning("schedule rule failed for %s, using the unscheduled function: %s", name, _last_line(exc))
            continue
        new = new.with_attr("global_symbol", name).with_attr("tirx.is_scheduled", True)
        mod[gv] = new
        notes["rules"][name] = rule
        notes["parallel"][name] = parallel_extents(new)
        if packed:
            packs[name] = packed
    if packs:
        mod = pack_constants(mod, packs)
    notes["packed_weights"] = sorted(packs)
    return mod, notes


def channels_fill_better(height: int, width: int, channels: int, lanes: int) -> bool:
    """Whether a stride-1 1×1 conv on an ``height × width`` map with ``channels`` outputs should
    vectorise over output channels: H·W is no multiple of the lanes (the flat rule needs that) and
    a row fills under 3/4 of its vectors (7 or 2 columns in 16 lanes; 14 columns fill 14/16 and keep
    the column rule), while the channels fill whole vectors (or half vectors of >= 4 lanes)."""
    if (height * width) % lanes == 0:
        return False
    row_fill = width / (lanes * -(-width // lanes))
    half = max(4, lanes // 2)
    return row_fill < 0.75 and (channels % lanes == 0 or channels % half == 0)


def relayout_pointwise(mod: Any, lanes: int) -> tuple[Any, int]:
    """Give the constant weights of the stride-1 1×1 convs that :func:`channels_fill_better` picks
    (the 7×7 maps at 224 px; 2×2 and 1×1 at 32 px) the IHWO layout, so output channels are
    contiguous and fill the vector (:func:`_schedule_pointwise_channels`). Returns the module and
    how many convs changed."""
    import tvm
    from tvm import relax

    conv2d = tvm.ir.Op.get("relax.nn.conv2d")

    @relax.expr_functor.mutator
    class _Relayout(relax.PyExprMutator):  # type: ignore[misc]
        count = 0

        def visit_call_(self, call: Any) -> Any:
            call = super().visit_call_(call)
            if call.op != conv2d or not isinstance(call.args[1], tvm.ir.expr.Constant):
                return call
            a, shape = call.attrs, call.args[0].ty.shape
            weight = call.args[1].value.numpy()
            pointwise = weight.ndim == 4 and weight.shape[2:] == (1, 1) and int(a.groups) == 1
            stride1 = [int(v) for v in a.strides] == [1, 1] and not any(int(v) for v in a.padding)
            if not (pointwise and stride1 and a.data_layout == "NCHW" and a.kernel_layout == "OIHW"
                    and a.out_layout == "NCHW" and len(shape) == 4):
                return call
            if not channels_fill_better(int(shape[2]), int(shape[3]), weight.shape[0], lanes):
                return call
            self.count += 1
            return relax.op.nn.conv2d(call.args[0], relax.const(weight.transpose(1, 2, 3, 0).copy()),
                                      strides=a.strides, padding=a.padding, dilation=a.dilation, groups=1,
                                      data_layout="NCHW", kernel_layout="IHWO", out_layout="NCHW",
                                      out_dtype=a.out_dtype)

    mutator = _Relayout(mod)
    for gv, func in list(mod.functions.items()):
        if isinstance(func, relax.Function):
            mod[gv] = mutator.visit_expr(func)
    return mod, mutator.count


#: Relax ops the numpy constant folder evaluates (what BN folding and exported weights leave behind).
_NUMPY_OPS = {
    "relax.add": lambda a, b: a + b, "relax.subtract": lambda a, b: a - b,
    "relax.multiply": lambda a, b: a * b, "relax.divide": lambda a, b: a / b,
    "relax.sqrt": lambda a: np.sqrt(a), "relax.rsqrt": lambda a: 1 / np.sqrt(a),
    "relax.negative": lambda a: -a,
}


def fold_constants(mod: Any) -> Any:
    """Fold the constant arithmetic of BN folding (``eps`` add, sqrt, divide, reshape, the weight
    scale) and weight transposes with numpy, in float32, then TVM's ``FoldConstant`` for whatever is
    left. ``FoldConstant`` compiles and runs a kernel per constant expression: 12 s of the 20 s build
    of a NAS-Bench-201 network."""
    import tvm
    from tvm import relax

    def value(expr: Any) -> Any:
        if isinstance(expr, (tvm.tirx.FloatImm, tvm.tirx.IntImm)):
            return expr.value
        if isinstance(expr, tvm.ir.expr.Constant):
            v = expr.value
            return v.numpy() if hasattr(v, "numpy") else v
        return None

    @relax.expr_functor.mutator
    class _Fold(relax.PyExprMutator):  # type: ignore[misc]
        def visit_call_(self, call: Any) -> Any:
            call = super().visit_call_(call)
            if not isinstance(call.op, tvm.ir.Op):
                return call
            args = []
            for a in call.args:
                if isinstance(a, relax.Var) and self.lookup_binding(a) is not None:
                    a = self.lookup_binding(a)
                args.append(a)
            name = call.op.name
            try:
                if name in _NUMPY_OPS:
                    vals = [value(a) for a in args]
                    if any(v is None for v in vals) or not any(isinstance(v, np.ndarray) for v in vals):
                        return call
                    out = _NUMPY_OPS[name](*vals)
                elif name == "relax.reshape" and isinstance(args[1], relax.ShapeExpr):
                    arr = value(args[0])
                    if not isinstance(arr, np.ndarray):
                        return call
                    out = arr.reshape([int(v) for v in args[1].values])
                elif name == "relax.permute_dims":
                    arr = value(args[0])
                    if not isinstance(arr, np.ndarray):
                        return call
                    axes = call.attrs.axes
                    out = arr.transpose(None if axes is None else [int(v) for v in axes])
                else:
                    return call
            except (TypeError, ValueError):  # shapes numpy does not broadcast: leave it to TVM
                return call
            dtype = str(call.ty.dtype) if hasattr(call.ty, "dtype") else "float32"
            return relax.const(np.ascontiguousarray(out, dtype=dtype), dtype)

    folder = _Fold(mod)
    for gv, func in list(mod.functions.items()):
        if isinstance(func, relax.Function):
            mod[gv] = folder.visit_expr(func)
    mod = relax.transform.DeadCodeElimination()(mod)
    return relax.transform.FoldConstant()(mod)


def prepare(mod: Any, target: Any) -> Any:
    """BN folded into the constant conv weights and a bias (as ONNX Runtime does; the epilogue is
    then one add, not subtract/divide/multiply/add); 1×1 weights relaid out for the target's
    vectors; any BN left → element-wise ops; then legalize and fuse with the ``zero`` pipeline."""
    from tvm import relax

    mod = relax.transform.FoldBatchnormToConv2D()(mod)
    mod = fold_constants(mod)
    if target.kind.name == "llvm":
        mod, _ = relayout_pointwise(mod, vector_lanes(target))
    mod = relax.transform.DecomposeOpsForInference()(mod)
    mod = relax.transform.CanonicalizeBindings()(mod)
    with target:
        return relax.get_pipeline("zero")(mod)


@register_backend
class ScheduledTVM(TVMBackend):
    """TVM with latbench's hand-written schedule rules (no tuning): what a user would deploy."""

    name = "tvm"
    description = "TVM with latbench's schedule rules (fused BN/ReLU6, vectorised register tiles, parallel); no tuning"

    def settings(self) -> dict[str, Any]:
        return {"rules_version": RULES_VERSION}

    def lower(self, mod: Any, target: Any, device: Device) -> tuple[Any, dict[str, Any]]:
        if target.kind.name != "llvm":
            # GPU: the default pipeline applies dlight schedules; the CPU rules do not apply.
            return mod, {"rules": "default-gpu-pipeline"}
        mod = prepare(mod, target)
        mod, notes = apply_rules(mod, target)
        if not notes["fallbacks"]:
            del notes["fallbacks"]
        return mod, notes
