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
"""The prior on the regularisation weight and the hyperparameter space: one home for both.

The method's objective is ``similarity + lambda_max * mean_x[w(x) |grad u(x)|^2] - log p(w)``. Everything that
depends on the choice of ``p`` lives in one :class:`WeightPrior` object:

- the activation that maps the weight head's logits into the prior's support (and its clamp);
- the negative log-likelihood ``-log p(w)`` as a function of the weight map and the prior's parameter;
- the parameter's name (a config id and a key of the hyperparameter dictionaries), its valid domain, its default
  value and default hyper range, and how it is displayed (``alpha - 1`` for the Beta prior).

Priors are registered by name (:func:`register_prior`), so networks, losses, engines, tuning and bundle configs
take either a name (``"beta"``, ``"gaussian"``) or an instance. A new prior is one subclass.

:class:`HyperparameterSpace` is a prior plus the ranges of its parameter and of ``lambda_max`` that the codes
``(b, r)`` in ``[0, 1]^2`` of a hyper-conditioned network are mapped onto (linearly; code 0 -> low, 1 -> high).
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any, ClassVar, TypeVar

import torch
import torch.nn.functional as F
from monai.utils import look_up_option

from svreg_monai.utils.validation import check_finite, check_number, check_per_sample_value, check_tensor

__all__ = [
    "BetaPrior",
    "GaussianPrior",
    "HyperparameterSpace",
    "PRIOR_REGISTRY",
    "WeightPrior",
    "beta_prior",
    "gaussian_prior",
    "get_prior",
    "register_prior",
]

# rounding tolerance of the inverse code mapping (a float32 alpha of 1.2 maps to a code of 1 + 2e-7)
_CODE_TOLERANCE = 1e-5


def _check_prior_weight(weight: torch.Tensor) -> torch.Tensor:
    check_tensor(weight, "weight", ndim=(4, 5))
    if weight.shape[1] != 1:
        raise ValueError(f"weight must have shape (B, 1, *S), got {tuple(weight.shape)}.")
    return check_finite(weight, "weight")


def beta_prior(weight: torch.Tensor, alpha: float | torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Negative log Beta(alpha, 1) prior on a weight map, up to a constant: ``(1 - alpha) * mean(log w)``.

    The weight is clamped to ``[eps, 1]`` first. For ``alpha > 1`` the term pushes the weights towards 1 (strong
    regularisation), balancing the data term's push towards 0.

    Args:
        weight: ``(B, 1, *S)`` weight map in ``(0, 1]``.
        alpha: ``alpha >= 1``, a float or a ``(B,)`` tensor (one value per sample, e.g. for hypernetworks).
        eps: lower clamp of the weight.

    Returns:
        ``(B,)`` prior term per sample.
    """
    _check_prior_weight(weight)
    alpha_b = check_per_sample_value(alpha, "alpha", weight.shape[0], weight, minimum=1.0)
    log_w = torch.log(torch.clamp(weight, eps, 1.0)).flatten(1).mean(dim=1)
    return (1.0 - alpha_b) * log_w


def gaussian_prior(
    weight: torch.Tensor,
    inv_sigma2: float | torch.Tensor,
    mean: float = 1.0,
    eps: float = 1e-6,
    max_weight: float = 5.0,
) -> torch.Tensor:
    """Negative log Gaussian prior on a weight map, up to a constant: ``inv_sigma2 * mean((w - mean)^2)``.

    The weight is clamped to ``[eps, max_weight]`` first.

    Args:
        weight: ``(B, 1, *S)`` positive weight map.
        inv_sigma2: ``1 / sigma^2 >= 0``, a float or a ``(B,)`` tensor (one value per sample).
        mean: the prior mean of the weight.
        eps: lower clamp of the weight.
        max_weight: upper clamp of the weight.

    Returns:
        ``(B,)`` prior term per sample.
    """
    _check_prior_weight(weight)
    inv_b = check_per_sample_value(inv_sigma2, "inv_sigma2", weight.shape[0], weight, minimum=0.0)
    sq = (torch.clamp(weight, eps, max_weight) - mean) ** 2
    return inv_b * sq.flatten(1).mean(dim=1)


def _range(values: Sequence[float], name: str) -> tuple[float, float]:
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or len(values) != 2:
        raise ValueError(f"{name} must be (low, high), got {values!r}.")
    lo, hi = (check_number(v, name) for v in values)
    if not lo < hi:
        raise ValueError(f"{name} must be (low, high) with low < high, got {tuple(values)!r}.")
    return lo, hi


class WeightPrior:
    """A prior ``p`` on the voxel-wise regularisation weight ``w``: the base class of every prior.

    A subclass sets the class attributes and implements :meth:`activation` and :meth:`negative_log_likelihood`;
    :func:`register_prior` makes it available by :attr:`name` to every component that takes ``prior=``.

    Class attributes:
        name: registry key (``"beta"``).
        parameter: the prior parameter's name, used as config id and dictionary key (``"alpha"``).
        parameter_minimum: smallest valid parameter value (``1`` for the Beta prior's ``alpha``).
        default_parameter: the parameter when none is given.
        default_range: the parameter at codes 0 and 1 of a hyper-conditioned network.
        display_name: how figures and tables name the displayed parameter (``"α − 1"``).
        display_offset: displayed value = parameter − offset (``1`` for ``alpha``, so that ``alpha − 1`` is shown
            and searched on a log scale).
        search_name: name of the displayed value as a search parameter (Optuna), ``"alpha_minus_one"``; empty for
            :attr:`parameter`.

    Args:
        eps: lower bound of the weight (activation clamp and before the logarithm).
        max_weight: upper bound of the weight for priors with unbounded support (ignored by bounded ones).
    """

    name: ClassVar[str] = ""
    parameter: ClassVar[str] = ""
    parameter_minimum: ClassVar[float] = 0.0
    default_parameter: ClassVar[float] = 1.0
    default_range: ClassVar[tuple[float, float]] = (0.0, 1.0)
    display_name: ClassVar[str] = ""
    display_offset: ClassVar[float] = 0.0
    search_name: ClassVar[str] = ""

    def __init__(self, eps: float = 1e-6, max_weight: float = 5.0) -> None:
        eps, max_weight = check_number(eps, "eps"), check_number(max_weight, "max_weight")
        if not 0 < eps < 1 or max_weight <= eps:
            raise ValueError(f"need 0 < eps < 1 and max_weight > eps, got eps={eps}, max_weight={max_weight}.")
        self.eps = eps
        self.max_weight = max_weight

    def activation(self, logits: torch.Tensor) -> torch.Tensor:
        """Map ``(B, 1, *S)`` head logits to the weight, inside the prior's support, clamped below at ``eps``."""
        raise NotImplementedError

    def logits(self, weight: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
        """Inverse of :meth:`activation` (weights kept ``eps`` inside the support), for warm starts of
        :func:`~svreg_monai.registration.optimize_spr`; priors that do not need one may leave it out."""
        raise NotImplementedError(f"the {self.name} prior has no inverse activation (logits).")

    def negative_log_likelihood(self, weight: torch.Tensor, parameter: float | torch.Tensor) -> torch.Tensor:
        """``-log p(w)`` up to a constant, averaged over voxels.

        Args:
            weight: ``(B, 1, *S)`` weight map.
            parameter: the prior parameter, a float or a ``(B,)`` tensor (one value per sample).

        Returns:
            ``(B,)`` value per sample.
        """
        raise NotImplementedError

    def check_parameter(self, value: Any, name: str | None = None) -> float:
        """Return ``value`` as a float after checking it is a finite number in the parameter's domain."""
        name = name or self.parameter
        value = check_number(value, name)
        if value < self.parameter_minimum:
            raise ValueError(f"{name} must be >= {self.parameter_minimum:g} for the {self.name} prior, got {value}.")
        return value

    def to_display(self, value: Any) -> Any:
        """The parameter as shown and searched (``alpha - 1`` for the Beta prior); works on floats and arrays."""
        return value - self.display_offset

    def from_display(self, value: Any) -> Any:
        """Inverse of :meth:`to_display`."""
        return value + self.display_offset

    @property
    def search_parameter(self) -> str:
        """:attr:`search_name`, or :attr:`parameter` when it is empty."""
        return self.search_name or self.parameter

    def __repr__(self) -> str:
        return f"{type(self).__name__}(eps={self.eps:g}, max_weight={self.max_weight:g})"


_PriorT = TypeVar("_PriorT", bound=type[WeightPrior])

PRIOR_REGISTRY: dict[str, type[WeightPrior]] = {}
"""Registered priors by :attr:`WeightPrior.name`."""


def register_prior(cls: _PriorT) -> _PriorT:
    """Class decorator: make a :class:`WeightPrior` subclass available by its ``name`` everywhere.

    Raises:
        ValueError: for a class that is not a ``WeightPrior``, has no ``name`` or ``parameter``, or whose name is
            taken by another class.
    """
    if not (isinstance(cls, type) and issubclass(cls, WeightPrior)):
        raise ValueError(f"register_prior takes a WeightPrior subclass, got {cls!r}.")
    if not cls.name or not cls.parameter:
        raise ValueError(f"{cls.__name__} must set the class attributes `name` and `parameter`.")
    if PRIOR_REGISTRY.get(cls.name, cls) is not cls:
        raise ValueError(f"a prior named {cls.name!r} is already registered ({PRIOR_REGISTRY[cls.name].__name__}).")
    _range(cls.default_range, f"{cls.__name__}.default_range")
    PRIOR_REGISTRY[cls.name] = cls
    return cls


def get_prior(prior: str | WeightPrior, **kwargs: Any) -> WeightPrior:
    """The prior object for ``prior``: an instance is returned as is, a name is looked up in the registry.

    Args:
        prior: a registered name (``"beta"``, ``"gaussian"``, ...) or a :class:`WeightPrior`.
        kwargs: constructor arguments for a name (``eps``, ``max_weight``, ``mean``, ...); those the prior's
            constructor does not take are ignored, so callers can pass the union of all priors' options.

    Raises:
        ValueError: for an unknown name (listing the registered ones) or another type.
    """
    if isinstance(prior, WeightPrior):
        return prior
    if not isinstance(prior, str):
        raise ValueError(f"prior must be a prior name {sorted(PRIOR_REGISTRY)} or a WeightPrior, got {prior!r}.")
    try:
        cls = look_up_option(prior, PRIOR_REGISTRY)
    except ValueError as e:
        raise ValueError(f"prior {prior!r} is not registered; registered priors: {sorted(PRIOR_REGISTRY)}.") from e
    accepted = inspect.signature(cls.__init__).parameters
    return cls(**{k: v for k, v in kwargs.items() if k in accepted})


@register_prior
class BetaPrior(WeightPrior):
    """Beta(alpha, 1) on ``w`` in ``(0, 1]`` (the reference): ``-log p(w) = (1 - alpha) log w``.

    Activation ``clamp(sigmoid(x), eps, 1)``; parameter ``alpha >= 1`` (default 1.1, hyper range 1 to 1.2 as the
    reference's ``alpha = 1 + 0.2 b``), displayed and searched as ``alpha - 1``.
    """

    name = "beta"
    parameter = "alpha"
    parameter_minimum = 1.0
    default_parameter = 1.1
    default_range = (1.0, 1.2)
    display_name = "α − 1"
    display_offset = 1.0
    search_name = "alpha_minus_one"

    def activation(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.clamp(torch.sigmoid(logits), self.eps, 1.0)

    def logits(self, weight: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
        w = weight.clamp(eps, 1.0 - eps)
        return torch.log(w) - torch.log1p(-w)

    def negative_log_likelihood(self, weight: torch.Tensor, parameter: float | torch.Tensor) -> torch.Tensor:
        return beta_prior(weight, parameter, self.eps)


@register_prior
class GaussianPrior(WeightPrior):
    """Gaussian N(mean, sigma^2) on ``w``: ``-log p(w) = (w - mean)^2 / sigma^2``, parameter ``inv_sigma2``.

    Activation ``clamp(softplus(x), eps, max_weight)`` (positive, unbounded up to ``max_weight``); parameter
    ``inv_sigma2 >= 0`` (default 1, hyper range 0 to 2), displayed as ``1/σ²``.

    Args:
        eps: lower bound of the weight.
        max_weight: upper bound of the weight.
        mean: the prior mean of the weight.
    """

    name = "gaussian"
    parameter = "inv_sigma2"
    parameter_minimum = 0.0
    default_parameter = 1.0
    default_range = (0.0, 2.0)
    display_name = "1/σ²"

    def __init__(self, eps: float = 1e-6, max_weight: float = 5.0, mean: float = 1.0) -> None:
        super().__init__(eps=eps, max_weight=max_weight)
        self.mean = check_number(mean, "mean")

    def activation(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.clamp(F.softplus(logits), self.eps, self.max_weight)

    def logits(self, weight: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
        w = weight.clamp_min(eps)
        return w + torch.log(-torch.expm1(-w))  # softplus^-1

    def negative_log_likelihood(self, weight: torch.Tensor, parameter: float | torch.Tensor) -> torch.Tensor:
        return gaussian_prior(weight, parameter, self.mean, self.eps, self.max_weight)

    def __repr__(self) -> str:
        return f"GaussianPrior(eps={self.eps:g}, max_weight={self.max_weight:g}, mean={self.mean:g})"


class HyperparameterSpace:
    """A prior and the ranges its parameter and ``lambda_max`` span for the codes of a hyper-conditioned network.

    Codes ``(b, r)`` in ``[0, 1]^2`` map linearly: ``b`` to the prior parameter over ``prior_range`` and ``r`` to
    ``lambda_max`` over ``lambda_range`` (code 0 -> low, 1 -> high). With the defaults this is the reference's
    ``alpha = 1 + 0.2 b``, ``lambda_max = 5 r``.

    Args:
        prior: a registered prior name or a :class:`WeightPrior`.
        prior_range: the prior parameter at codes 0 and 1; None for the prior's ``default_range``.
        lambda_range: ``lambda_max`` at codes 0 and 1.

    Raises:
        ValueError: for an unknown prior, or a range with ``low >= high`` or outside the parameter's domain.

    Example::

        space = HyperparameterSpace("beta")
        values = space.to_values(torch.tensor([[0.5, 0.2]]))  # {"alpha": tensor([1.1]), "lambda_max": tensor([1.])}
        codes = space.to_codes(1.1, 1.0)  # tensor([[0.5, 0.2]])
    """

    def __init__(
        self,
        prior: str | WeightPrior = "beta",
        prior_range: Sequence[float] | None = None,
        lambda_range: Sequence[float] = (0.0, 5.0),
    ) -> None:
        self.prior = get_prior(prior)
        name = f"{self.prior.parameter}_range"
        self.prior_range = _range(self.prior.default_range if prior_range is None else prior_range, name)
        self.lambda_range = _range(lambda_range, "lambda_range")
        if self.prior_range[0] < self.prior.parameter_minimum:
            raise ValueError(
                f"{name} must lie in [{self.prior.parameter_minimum:g}, inf) for the {self.prior.name} prior, "
                f"got {self.prior_range}."
            )
        if self.lambda_range[0] < 0.0:
            raise ValueError(f"lambda_range must be non-negative, got {self.lambda_range}.")

    @property
    def names(self) -> tuple[str, str]:
        """``(prior parameter, "lambda_max")``, the names of the values of codes ``b`` and ``r``."""
        return self.prior.parameter, "lambda_max"

    @property
    def ranges(self) -> tuple[tuple[float, float], tuple[float, float]]:
        """``(prior_range, lambda_range)``."""
        return self.prior_range, self.lambda_range

    def check_codes(self, codes: Any, extrapolate: bool = False, name: str = "codes") -> torch.Tensor:
        """``codes`` as a ``(B, 2)`` tensor (``(2,)`` becomes ``(1, 2)``) after checking shape and values.

        Raises:
            ValueError: for codes of another shape, non-finite codes, or codes outside ``[0, 1]`` unless
                ``extrapolate`` (the network was trained on ``[0, 1]`` only).
        """
        if not isinstance(codes, torch.Tensor):
            codes = torch.as_tensor(codes, dtype=torch.float64)
        check_tensor(codes, name, ndim=(1, 2))
        if codes.ndim == 1:
            codes = codes.unsqueeze(0)
        if codes.shape[1] != 2:
            raise ValueError(
                f"{name} must have shape (B, 2) with columns ({self.prior.parameter} code, lambda_max code), got "
                f"{tuple(codes.shape)}."
            )
        if not (torch.jit.is_scripting() or torch.jit.is_tracing()):
            if not bool(torch.isfinite(codes).all()):
                raise ValueError(f"{name} must be finite, got {codes.tolist()}.")
            if not extrapolate and bool(((codes < 0) | (codes > 1)).any()):
                raise ValueError(
                    f"{name} must lie in the trained range [0, 1], got {codes.tolist()}; pass extrapolate=True to use "
                    "codes outside it."
                )
        return codes

    def to_values(self, codes: torch.Tensor | Sequence[float], extrapolate: bool = False) -> dict[str, torch.Tensor]:
        """``(B, 2)`` (or ``(2,)``) codes -> ``{prior parameter: (B,), "lambda_max": (B,)}`` in the codes' dtype.

        Raises:
            ValueError: as :meth:`check_codes`.
        """
        codes = self.check_codes(codes, extrapolate)
        (p0, p1), (l0, l1) = self.ranges
        return {self.prior.parameter: p0 + (p1 - p0) * codes[:, 0], "lambda_max": l0 + (l1 - l0) * codes[:, 1]}

    def to_codes(
        self,
        prior_param: float | torch.Tensor,
        lambda_max: float | torch.Tensor,
        extrapolate: bool = False,
        dtype: torch.dtype | None = None,
    ) -> torch.Tensor:
        """Inverse of :meth:`to_values`: the prior parameter and ``lambda_max`` -> ``(B, 2)`` codes.

        Args:
            prior_param: the prior parameter, a number or a ``(B,)`` tensor.
            lambda_max: a number or a ``(B,)`` tensor (broadcast against ``prior_param``).
            extrapolate: accept values outside the ranges (codes outside ``[0, 1]``).
            dtype: of the result (computed in float64); None for the tensors' dtype, float32 for numbers.

        Returns:
            ``(B, 2)`` codes (``B = 1`` for numbers) on the tensors' device.

        Raises:
            ValueError: for a value outside its range (unless ``extrapolate``), naming the value and the range;
                codes within ``1e-5`` of ``[0, 1]`` (rounding at the ends of a range) are clamped into it.
        """
        tensors = [v for v in (prior_param, lambda_max) if isinstance(v, torch.Tensor)]
        out_dtype = dtype or (tensors[0].dtype if tensors else torch.float32)
        device = tensors[0].device if tensors else None
        columns = [self.code_of(n, v, extrapolate, device) for n, v in zip(self.names, (prior_param, lambda_max))]
        b, r = torch.broadcast_tensors(*columns)
        return torch.stack((b, r), dim=1).to(out_dtype)

    def code_of(
        self, name: str, value: float | torch.Tensor, extrapolate: bool = False, device: torch.device | None = None
    ) -> torch.Tensor:
        """Codes of the values of one hyperparameter (``name`` is the prior parameter or ``"lambda_max"``).

        Returns:
            ``(B,)`` float64 codes (``B = 1`` for a number).

        Raises:
            ValueError: for an unknown name, a non-finite value, or a value outside its range unless
                ``extrapolate`` (codes within ``1e-5`` of ``[0, 1]``, rounding at the ends, are clamped into it).
        """
        if name not in self.names:
            raise ValueError(f"the {self.prior.name} prior's hyperparameters are {list(self.names)}, got {name!r}.")
        lo, hi = self.ranges[self.names.index(name)]
        if isinstance(value, bool) or not isinstance(value, (int, float, torch.Tensor)):
            raise ValueError(f"{name} must be a number or a (B,) tensor, got {value!r}.")
        t = torch.as_tensor(value, dtype=torch.float64, device=device)
        if t.ndim > 1:
            raise ValueError(f"{name} must be a number or a (B,) tensor, got shape {tuple(t.shape)}.")
        t = t.reshape(-1)
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"{name} must be finite, got {t.tolist()}.")
        code = (t - lo) / (hi - lo)
        if extrapolate:
            return code
        if bool(((code < -_CODE_TOLERANCE) | (code > 1 + _CODE_TOLERANCE)).any()):
            shown = t.tolist() if t.numel() > 1 else t.item()
            raise ValueError(
                f"{name} must lie in the range the network was trained on, [{lo:g}, {hi:g}], got {shown}; "
                "pass extrapolate=True to use values outside it."
            )
        return code.clamp(0.0, 1.0)

    def __repr__(self) -> str:
        return (
            f"HyperparameterSpace(prior={self.prior!r}, {self.prior.parameter}_range={self.prior_range}, "
            f"lambda_range={self.lambda_range})"
        )
