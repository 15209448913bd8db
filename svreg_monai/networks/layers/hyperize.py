# Copyright (c) svreg-monai contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""Turn any network into a hyperparameter-conditioned one by replacing its convolutions and linear layers.

:func:`hyperize` replaces every selected ``nn.Conv{1,2,3}d``, ``nn.ConvTranspose{1,2,3}d`` and ``nn.Linear`` of a
network by a hyper layer (:class:`~svreg_monai.networks.layers.HyperConv`, ...) and wraps the network in a
:class:`HyperConditionedNetwork` that owns the :class:`~svreg_monai.networks.layers.HyperNetwork`. Calling the
wrapper with ``hyper=codes`` embeds the codes once, makes the embedding visible to all its hyper layers for the
duration of the call (through a context variable, so nothing is stored on the modules and concurrent calls in
other threads are unaffected) and calls the wrapped network unchanged.
"""

from __future__ import annotations

import copy
import fnmatch
import itertools
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, Union

import torch
import torch.nn as nn

from svreg_monai.networks.layers.hyper_layers import (
    GENERATORS,
    HyperConv,
    HyperConvTranspose,
    HyperLinear,
    _HyperLayer,
    hyper_embedding_context,
)
from svreg_monai.networks.layers.hypernetwork import HyperNetwork
from svreg_monai.utils.precision import GUARDED_CONVOLUTIONS
from svreg_monai.utils.validation import check_option

__all__ = ["HyperConditionedNetwork", "hyperize", "HYPERIZABLE_TYPES"]

HYPERIZABLE_TYPES: dict[type, type] = {
    nn.Conv1d: HyperConv,
    nn.Conv2d: HyperConv,
    nn.Conv3d: HyperConv,
    nn.ConvTranspose1d: HyperConvTranspose,
    nn.ConvTranspose2d: HyperConvTranspose,
    nn.ConvTranspose3d: HyperConvTranspose,
    nn.Linear: HyperLinear,
}
"""Exact layer types that are converted, and their hyper counterparts (the convolutions of a bfloat16 network, see
:func:`~svreg_monai.utils.precision.guard_bfloat16_convolutions`, included). Other subclasses (e.g. the output
projection of ``nn.MultiheadAttention``, whose weight is read directly rather than through ``forward``) are left
unchanged."""
HYPERIZABLE_TYPES.update({guarded: HYPERIZABLE_TYPES[plain] for plain, guarded in GUARDED_CONVOLUTIONS.items()})

LayerSelector = Union[str, Sequence[str], Callable[[str, nn.Module], bool], None]

_CONTEXT_KEYS = itertools.count()

# an original layer whose weights are below this standard deviation is a deliberately near-zero output head
_SMALL_WEIGHT_STD = 1e-3
_SMALL_INIT_STD = 1e-5


def _selected(selector: LayerSelector, name: str, module: nn.Module) -> bool:
    if callable(selector):
        return bool(selector(name, module))
    patterns = (selector,) if isinstance(selector, str) else tuple(selector or ())
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def _generator_init_std(module: nn.Module, base_weights: bool) -> float | None:
    """Without base weights, near-zero output heads get a ``N(0, 1e-5)`` generator as in the reference."""
    if base_weights:
        return None
    weight = module.weight
    if weight.is_meta or weight.numel() < 2:
        return None
    return _SMALL_INIT_STD if float(weight.detach().float().std()) < _SMALL_WEIGHT_STD else None


class HyperConditionedNetwork(nn.Module):
    """A network whose convolutions and linear layers are generated from hyperparameter codes.

    The network is converted in place: each selected layer is replaced by a hyper layer built with
    ``from_module``. With ``base_weights=True`` every hyper layer keeps the original weights as its base and its
    code-dependent part starts at zero, so the conditioned network initially reproduces the original one for
    every code; gradients reach the generators from the first step (their gradient is the weight gradient times
    the embedding) and the hypernetwork from the second.

    Args:
        network: the network to condition (modified in place; see :func:`hyperize` for a copying variant).
        num_hyper_params: number ``P`` of hyperparameter codes per sample.
        hidden: embedding width ``E`` of the :class:`~svreg_monai.networks.layers.HyperNetwork`.
        layers: number of hypernetwork layers.
        generator: ``"dense"`` (the reference's ``Linear(E, numel)`` per parameter tensor) or ``"low_rank"`` (base +
            ``rank`` basis tensors mixed by the embedding), see :mod:`svreg_monai.networks.layers.hyper_layers`.
        rank: number of basis tensors of the ``"low_rank"`` generator.
        base_weights: keep the original weights as a base (start equal to the original network). ``False`` with
            ``generator="dense"`` is the reference's exact form (weights generated from scratch; generators of
            near-zero output heads, weight std < 1e-3, start from ``N(0, 1e-5)`` as the reference's flow heads).
        include: layers to convert, by qualified name (as in ``named_modules``): glob pattern(s), e.g.
            ``"decoder.*"``, or a callable ``(name, module) -> bool``; None for all supported layers.
        exclude: layers to keep unchanged, same forms as ``include``; applied after ``include``.
        act: activation of the hypernetwork (MONAI name).

    Raises:
        ValueError: if no layer is selected for conversion, or on invalid arguments.

    Example::

        net = HyperConditionedNetwork(UNet(3, 2, 3, channels=(8, 16), strides=(2,)), num_hyper_params=2)
        out = net(x, hyper=torch.rand(x.shape[0], 2))

    Note:
        Gradient checkpointing that recomputes hyper layers during the backward pass (outside the wrapper's call)
        is not supported: the embedding is only visible during the call.
    """

    def __init__(
        self,
        network: nn.Module,
        num_hyper_params: int = 2,
        hidden: int = 96,
        layers: int = 6,
        generator: str = "low_rank",
        rank: int = 8,
        base_weights: bool = True,
        include: LayerSelector = None,
        exclude: LayerSelector = None,
        act: str | tuple | None = "relu",
    ) -> None:
        super().__init__()
        if not isinstance(network, nn.Module):
            raise ValueError(f"network must be a torch.nn.Module, got {type(network).__name__}.")
        check_option(generator, GENERATORS, "generator")
        self.hypernet = HyperNetwork(num_hyper_params, hidden=hidden, layers=layers, act=act)
        self.context_key = next(_CONTEXT_KEYS)
        self.generator = generator
        self.rank = rank if generator == "low_rank" else None
        self.base_weights = base_weights
        settings = {"embedding_dim": hidden, "generator": generator, "rank": rank, "base_weights": base_weights}
        network, names = self._convert(network, include, exclude, settings)
        if not names:
            raise ValueError(
                "no layer was converted: the network has no nn.Conv{1,2,3}d, nn.ConvTranspose{1,2,3}d or nn.Linear "
                f"selected by include={include!r} and exclude={exclude!r}."
            )
        self.network = network
        self.hyper_layer_names: tuple[str, ...] = tuple(names)

    def _make(self, module: nn.Module, settings: dict[str, Any]) -> _HyperLayer:
        cls = HYPERIZABLE_TYPES[type(module)]
        layer = cls.from_module(  # type: ignore[attr-defined]
            module, init_std=_generator_init_std(module, settings["base_weights"]), **settings
        )
        layer.context_key = self.context_key
        return layer

    def _convert(
        self, root: nn.Module, include: LayerSelector, exclude: LayerSelector, settings: dict[str, Any]
    ) -> tuple[nn.Module, list[str]]:
        def wanted(name: str, module: nn.Module) -> bool:
            if type(module) not in HYPERIZABLE_TYPES:
                return False
            if include is not None and not _selected(include, name, module):
                return False
            return not (exclude is not None and _selected(exclude, name, module))

        if wanted("", root):
            return self._make(root, settings), [""]
        # layers inside existing hyper layers / hypernetworks (their generators) are never converted
        skip = [name + "." for name, m in root.named_modules() if isinstance(m, (_HyperLayer, HyperNetwork)) and name]
        replaced: dict[int, nn.Module] = {}
        names: list[str] = []
        # every (parent, attribute) slot, also the repeated ones of a module registered twice
        slots = [
            (parent, parent_name, child_name, child)
            for parent_name, parent in root.named_modules(remove_duplicate=False)
            for child_name, child in list(parent._modules.items())
            if child is not None
        ]
        for parent, parent_name, child_name, child in slots:
            name = f"{parent_name}.{child_name}" if parent_name else child_name
            if any(name.startswith(prefix) for prefix in skip):
                continue
            if id(child) in replaced:
                setattr(parent, child_name, replaced[id(child)])
                continue
            if wanted(name, child):
                replaced[id(child)] = self._make(child, settings)
                setattr(parent, child_name, replaced[id(child)])
                names.append(name)
        return root, names

    def embed(self, hyper: torch.Tensor) -> torch.Tensor:
        """Embed ``(B, P)`` codes into the ``(B, E)`` embedding the hyper layers are generated from."""
        return self.hypernet(hyper)

    @contextmanager
    def conditioned(self, hyper: torch.Tensor) -> Iterator[torch.Tensor]:
        """Context in which the hyper layers of this network use the embedding of ``hyper``.

        Useful to call submodules or methods of the wrapped network other than ``forward``::

            with net.conditioned(codes):
                features = net.network.encoder(x)

        Args:
            hyper: ``(B, P)`` codes (one row per sample, or one row for the whole batch).

        Yields:
            the ``(B, E)`` embedding.
        """
        with hyper_embedding_context(self.context_key, self.embed(hyper)) as embedding:
            yield embedding

    def forward(self, *args: Any, hyper: torch.Tensor, **kwargs: Any) -> Any:
        """Call the wrapped network with its hyper layers conditioned on ``hyper``.

        Args:
            args: positional inputs of the wrapped network.
            hyper: ``(B, P)`` hyperparameter codes, one row per sample (``(1, P)`` or ``(P,)`` for all samples).
            kwargs: keyword inputs of the wrapped network.

        Returns:
            the wrapped network's output.
        """
        with self.conditioned(hyper):
            return self.network(*args, **kwargs)

    def load_base_state_dict(self, state_dict: Mapping[str, torch.Tensor]) -> HyperConditionedNetwork:
        """Start from a trained plain network: its weights become the bases, the code-dependent parts zero.

        ``state_dict`` is the ``state_dict()`` of the network this one was built from (same architecture, not
        hyper-conditioned), e.g. a trained plain model. Afterwards the conditioned network reproduces that model for
        every code, and hyper training only has to learn how the weights move with the codes (a warm start; the
        hypernetwork itself keeps its initialisation).

        Args:
            state_dict: the plain network's parameters and buffers, by their names in that network.

        Returns:
            ``self``, so that a config can write ``$@network_def.load_base_state_dict(...)``.

        Raises:
            ValueError: without base weights (``base_weights=False``), or when ``state_dict`` misses a parameter of
                the plain network, has a name it does not know, or a tensor of another shape (all named).
        """
        if not self.base_weights:
            raise ValueError("load_base_state_dict needs base_weights=True: this network has no base weights.")
        layers = {name: self.network.get_submodule(name) for name in self.hyper_layer_names}
        generated: dict[str, Any] = {}
        for name, layer in layers.items():
            generated[f"{name}.weight"] = layer.weight_generator
            if layer.bias_generator is not None:
                generated[f"{name}.bias"] = layer.bias_generator
        rest = {key: value for key, value in state_dict.items() if key not in generated}
        missing = sorted(set(generated) - set(state_dict))
        own = self.network.state_dict()
        generator_keys = {key for key in own if any(key.startswith(f"{name}.") for name in layers)}
        missing += sorted(set(own) - generator_keys - set(rest))
        unexpected = sorted(set(rest) - set(own))
        shapes = [
            f"{key}: {tuple(value.shape)} != {tuple(own[key].shape)}"
            for key, value in rest.items()
            if key in own and tuple(value.shape) != tuple(own[key].shape)
        ]
        shapes += [
            f"{key}: {tuple(state_dict[key].shape)} != {generator.shape}"
            for key, generator in generated.items()
            if key in state_dict and tuple(state_dict[key].shape) != generator.shape
        ]
        if missing or unexpected or shapes:
            raise ValueError(
                "state_dict does not match the plain network this one conditions: "
                f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
                f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}, wrong shapes {shapes[:5]}."
            )
        for key, generator in generated.items():
            generator.set_base(state_dict[key].to(generator.base.device, generator.base.dtype))
        self.network.load_state_dict(rest, strict=False)
        return self

    def extra_repr(self) -> str:
        rank = f", rank={self.rank}" if self.rank is not None else ""
        return (
            f"generator={self.generator!r}{rank}, base_weights={self.base_weights}, "
            f"hyper_layers={len(self.hyper_layer_names)}"
        )


def hyperize(
    module: nn.Module,
    num_hyper_params: int = 2,
    hidden: int = 96,
    layers: int = 6,
    generator: str = "low_rank",
    rank: int = 8,
    base_weights: bool = True,
    include: LayerSelector = None,
    exclude: LayerSelector = None,
    inplace: bool = False,
) -> HyperConditionedNetwork:
    """Condition a network on hyperparameters by converting its convolutions and linear layers into hyper layers.

    Any MONAI network (``UNet``, ``VoxelMorphUNet``, ``LocalNet``, ``SwinUNETR``, ...) becomes hyper-conditioned:
    ``hyperize(net)(x, hyper=codes)`` with ``codes`` of shape ``(B, P)``, one row per sample. With the default
    ``base_weights=True`` the result starts equal to ``module`` for every code.

    Args:
        module: the network.
        num_hyper_params: number ``P`` of codes per sample.
        hidden: hypernetwork width ``E``.
        layers: hypernetwork depth.
        generator: ``"low_rank"`` (default; parameter-efficient) or ``"dense"`` (the reference's form, ``E`` times
            the parameters of every converted layer).
        rank: basis size of the ``"low_rank"`` generator.
        base_weights: start from ``module``'s weights (see :class:`HyperConditionedNetwork`).
        include: glob pattern(s) over qualified layer names or a callable ``(name, module) -> bool``; None = all.
        exclude: same forms; layers to leave unchanged.
        inplace: convert ``module`` itself instead of a deep copy.

    Returns:
        the :class:`HyperConditionedNetwork`.
    """
    network = module if inplace else copy.deepcopy(module)
    return HyperConditionedNetwork(
        network,
        num_hyper_params=num_hyper_params,
        hidden=hidden,
        layers=layers,
        generator=generator,
        rank=rank,
        base_weights=base_weights,
        include=include,
        exclude=exclude,
    )
