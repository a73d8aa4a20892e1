"""ProxylessNAS on the NAS-Bench-201 cell space: the weight-sharing cell supernet and its architectures.

:class:`NB201Supernet` is the standard cell search of NAS-Bench-201's own baselines (DARTS, GDAS, ENAS,
and ProxylessNAS applied to cells): the network's skeleton (:class:`latbench.nasbench201_net.NB201Skeleton`:
stem, 3 stages × ``n`` cells, reduction blocks, head) with every cell edge a mixed op over the 5
candidates (``none`` = zeros). One :class:`~search.mixed_op.PathChoice` (α of 5) per edge (6) is shared
by all 15 cells: each cell has its own weights (:class:`~search.mixed_op.SharedMixedOp`), but the path of
an edge is drawn **once per step and used by every cell**, so one sample is one architecture of the space
(a cell string), the REINFORCE log-probability is that of the 6 edge choices, and a binary-gate step's
α gradient sums every cell's gate gradients. The derived architecture is the argmax per edge, as the
official ``arch_str`` and index (:func:`latbench.spaces.nb201_arch`).

The candidates start independently initialised (there is no ``align_init``: four of the five candidates
have no weights). In short runs the supernet learns slowly and α drift to the weight-free ops (see the
figures in ``search/README.md``).
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

from torch import nn

from latbench.errors import ConfigError, LatbenchError, read_json_config
from latbench.nasbench201 import NB201_C, NB201_CLASSES, NB201_EDGES, NB201_N, NB201_OPS, nb201_str, parse_nb201
from latbench.nasbench201_net import InferCell, NB201Network, NB201Skeleton, edge_op
from latbench.spaces import NB201, nb201_arch, space_of
from search.mixed_op import ALPHA_INIT_STD, PathChoice, SharedMixedOp
from search.supernet import ChoiceNet


#: A candidate's parameter in the supernet's state dict: cell, edge, candidate, the rest of the key.
_CANDIDATE_KEY = re.compile(r"^cells\.(\d+)\.layers\.(\d+)\.ops\.(\d+)\.(.+)$")


class NB201Supernet(ChoiceNet, NB201Skeleton):
    """Every NAS-Bench-201 cell at once in the standard skeleton (``in_channels`` input channels,
    ``n_classes`` classes). ``edges``: the 6 shared choices, in :data:`~latbench.nasbench201.NB201_EDGES`
    order; the module names of the skeleton are :class:`~latbench.nasbench201_net.NB201Network`'s."""

    def __init__(self, in_channels: int = 3, n_classes: int = NB201_CLASSES, c: int = NB201_C, n: int = NB201_N,
                 alpha_std: float = ALPHA_INIT_STD) -> None:
        edges = [PathChoice(NB201_OPS, alpha_std, index=i) for i in range(len(NB201_EDGES))]

        def cell(ch: int) -> nn.Module:
            return InferCell([SharedMixedOp(e, partial(edge_op, c=ch)) for e in edges], ch)

        super().__init__(cell, n_classes, c, n, in_channels)
        self.edges = nn.ModuleList(edges)

    @property
    def choices(self) -> Sequence[PathChoice]:
        return self.edges  # type: ignore[return-value]

    def derived_arch(self) -> dict[str, Any]:
        """The argmax cell as ``{"space": "nasbench201", "arch_str": …, "arch_index": …}``."""
        return nb201_arch(nb201_str(self.names(self.argmax())))


def load_nb201_arch(path: str | Path) -> dict[str, Any] | None:
    """The NAS-Bench-201 architecture of an arch JSON file (``{"space": "nasbench201", "arch_str"/"arch_index"}``,
    what the search writes), checked and canonical; ``None`` for a file of another space (ProxylessNAS)."""
    d = read_json_config(Path(path), "arch file")
    if not isinstance(d, dict) or space_of(d) != NB201:
        return None
    spec = d.get("arch_str") if d.get("arch_str") is not None else d.get("arch_index")
    if spec is None:
        raise ConfigError(f"{path}: a {NB201} architecture needs 'arch_str' or 'arch_index'")
    try:
        arch = nb201_arch(spec)
    except LatbenchError as e:
        raise ConfigError(f"{path}: {e}") from None
    if d.get("arch_index") is not None and d.get("arch_str") is not None and int(d["arch_index"]) != arch["arch_index"]:
        raise ConfigError(f"{path}: arch_index {d['arch_index']} is not that of {arch['arch_str']} "
                          f"({arch['arch_index']})")
    return arch


def nb201_net(arch: dict[str, Any], in_channels: int, n_classes: int,
              supernet_state: dict[str, Any] | None = None, source: str = "") -> NB201Network:
    """The network of ``arch`` for training data of ``in_channels`` / ``n_classes``: fresh weights, or
    the path's weights from a search's supernet (``supernet_state``: its ``net`` state dict): the stem,
    the reduction blocks, the head and, in every cell, the chosen candidate of each edge."""
    net = NB201Network(arch["arch_str"], n_classes, in_channels=in_channels)
    if supernet_state is None:
        return net
    sn = NB201Supernet(in_channels, n_classes)
    try:
        sn.load_state_dict(supernet_state)
    except RuntimeError:
        raise ConfigError(f"--init supernet: {source} holds no {NB201} supernet of this data "
                          f"({in_channels} input channels, {n_classes} classes)") from None
    choices = sn.indices(parse_nb201(arch["arch_str"]))
    state = {}
    for key, value in sn.state_dict().items():
        m = _CANDIDATE_KEY.match(key)
        if m is None:
            if not key.startswith("edges."):  # the skeleton's own modules keep their names
                state[key] = value
        elif int(m.group(3)) == choices[int(m.group(2))]:  # cells.i.layers.e.ops.c.x -> cells.i.layers.e.x
            state[f"cells.{m.group(1)}.layers.{m.group(2)}.{m.group(4)}"] = value
    net.load_state_dict(state)
    return net
