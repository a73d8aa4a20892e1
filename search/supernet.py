"""Supernets: :class:`ChoiceNet` (what the search does with a net of :class:`PathChoice` s) and the
ProxylessNAS :class:`Supernet` (stem, one :class:`MixedOp` per searchable layer, feature mix, logits).
The NAS-Bench-201 cell supernet is :class:`search.nb201.NB201Supernet`."""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn

from latbench.errors import ConfigError
from latbench.modules import Classifier, conv_bn
from latbench.space import Arch, Space
from search.mixed_op import ALPHA_INIT_STD, BINARIZE_MODES, MixedOp, PathChoice


class ChoiceNet(nn.Module):
    """A supernet whose architecture is one candidate per :class:`PathChoice` (:attr:`choices`):
    sampling, binarization, argmax and α, the same for every space."""

    @property
    def choices(self) -> Sequence[PathChoice]:
        """The searchable choices, in architecture order."""
        raise NotImplementedError

    def derived_arch(self) -> Any:
        """The argmax architecture (in the space's own form)."""
        raise NotImplementedError

    # -- parameters ----------------------------------------------------------------------------
    def arch_parameters(self) -> list[nn.Parameter]:
        """The α of every choice, in order."""
        return [m.alpha for m in self.choices]

    def weight_parameters(self) -> Iterator[nn.Parameter]:
        """Every parameter except the α."""
        for name, p in self.named_parameters():
            if not name.endswith(".alpha"):
                yield p

    # -- paths ---------------------------------------------------------------------------------
    def sample(self, gen: torch.Generator | None = None) -> list[int]:
        """Binarize every layer (one path each, drawn from its ``p``); returns the choices."""
        return [m.sample(gen) for m in self.choices]

    def sample_two(self, gen: torch.Generator | None = None) -> None:
        """Sample two paths per layer for a binary-gate architecture step."""
        for m in self.choices:
            m.sample_two(gen)

    def sample_arch(self, binarize: str, gen: torch.Generator | None = None) -> None:
        """Prepare an architecture step: ``two`` samples two paths per layer, ``full_v2`` one."""
        if binarize not in BINARIZE_MODES:
            raise ConfigError(f"unknown binarize mode {binarize!r}; choose one of {', '.join(BINARIZE_MODES)}")
        for m in self.choices:
            if binarize == "two":
                m.sample_two(gen)
            else:
                m.sample_full_v2(gen)

    def current_probs(self, temperature: float = 1.0) -> list[torch.Tensor]:
        """Per layer, the probabilities the latency term uses now (see :meth:`MixedOp.current_probs`)."""
        return [m.current_probs(temperature) for m in self.choices]

    def rescale(self) -> None:
        for m in self.choices:
            m.rescale()

    def end_arch_step(self) -> None:
        for m in self.choices:
            m.end_arch_step()

    def set_choices(self, choices: Sequence[int]) -> None:
        """Run exactly these candidate indices (one per layer)."""
        if len(choices) != len(self.choices):
            raise ConfigError(f"expected {len(self.choices)} choices, got {len(choices)}")
        for m, c in zip(self.choices, choices):
            m.set_active(c)

    def set_all_paths(self, on: bool = True) -> None:
        """DARTS-style mixed ops (every path runs, weighted by p); for the memory benchmark."""
        for m in self.choices:
            m.involved = ()
            m.all_paths = on

    def argmax(self) -> list[int]:
        return [m.argmax() for m in self.choices]

    def set_argmax(self) -> list[int]:
        """Run the derived architecture (argmax α per layer); returns its choices."""
        choices = self.argmax()
        self.set_choices(choices)
        return choices

    def names(self, choices: Sequence[int]) -> list[str]:
        return [m.candidates[c] for m, c in zip(self.choices, choices)]

    def indices(self, names: Sequence[str]) -> list[int]:
        return [m.candidates.index(n) for m, n in zip(self.choices, names)]

    def probs(self) -> list[torch.Tensor]:
        """Detached path probabilities of every layer."""
        return [m.probs.detach() for m in self.choices]

    def entropy(self) -> float:
        """Mean entropy (nats) of the layers' path distributions."""
        return sum(m.entropy() for m in self.choices) / len(self.choices)


class Supernet(ChoiceNet):
    """Every architecture of ``space`` at once; the fixed layers are built like
    :class:`latbench.modules.Network`'s, the searchable ones as :class:`MixedOp`.

    ``space.in_channels`` sets the stem's input channels (1 for grey-scale training data).
    ``align_init`` (default) starts every layer's candidates as the same function
    (:meth:`MixedOp.align_init`); α start as N(0, ``alpha_std``²)."""

    def __init__(self, space: Space, dropout: float = 0.0, align_init: bool = True,
                 alpha_std: float = ALPHA_INIT_STD) -> None:
        super().__init__()
        self.space = space
        stem, mix, logits = space.fixed_ops
        self.stem = conv_bn(stem.in_ch, stem.out_ch, 3, stem.stride)
        self.layers = nn.ModuleList([MixedOp.for_layer(layer, alpha_std) for layer in space.layers])
        if align_init:
            for m in self.layers:
                m.align_init()
        self.feature_mix = conv_bn(mix.in_ch, mix.out_ch, 1, 1)
        self.classifier = Classifier(logits.in_ch, logits.out_ch, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for layer in self.layers:
            x = layer(x)
        return self.classifier(self.feature_mix(x))

    @property
    def choices(self) -> Sequence[MixedOp]:
        return self.layers  # type: ignore[return-value]

    def derived_arch(self, space: Space | None = None) -> Arch:
        """The argmax architecture in ``space`` (e.g. the deployment space; default: this one)."""
        return (space or self.space).arch(self.names(self.argmax()))
