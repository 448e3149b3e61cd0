"""What the model parts' configs share: a table of named variants behind `from_variant`, and the
Dense / LayerNorm layers built in the config's compute and parameter dtypes."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Protocol, TypeVar

import flax.linen as nn

V = TypeVar("V")
C = TypeVar("C", bound="FromVariant")


def lookup_variant(variants: Mapping[str, V], kind: str, name: str) -> V:
    """`variants[name]`, or a ValueError naming the `kind` of model and the known variants."""
    if name not in variants:
        raise ValueError(f"unknown {kind} variant {name!r}; known: {sorted(variants)}")
    return variants[name]


class FromVariant:
    """Mixin of a config dataclass with a variant table: `class SwinConfig(FromVariant,
    variants=VARIANTS, kind="Swin")` gives `SwinConfig.from_variant("tiny", **overrides)`, the
    table's fields updated by `overrides`."""

    _variants: ClassVar[Mapping[str, Mapping[str, Any]]]
    _kind: ClassVar[str]

    def __init_subclass__(cls, *, variants: Mapping[str, Mapping[str, Any]], kind: str,
                          **kwargs: Any):
        super().__init_subclass__(**kwargs)
        cls._variants, cls._kind = variants, kind

    @classmethod
    def from_variant(cls: type[C], name: str, **overrides: Any) -> C:
        return cls(**{**lookup_variant(cls._variants, cls._kind, name), **overrides})


class HasDtypes(Protocol):
    dtype: Any  # compute dtype
    param_dtype: Any


class HasLayerNorm(HasDtypes, Protocol):
    layer_norm_eps: float


def dense(cfg: HasDtypes, features: int, name: str, **kwargs: Any) -> nn.Dense:
    """`nn.Dense` in `cfg`'s dtypes; `kwargs` (use_bias, kernel_init, ...) go to nn.Dense."""
    return nn.Dense(features, dtype=cfg.dtype, param_dtype=cfg.param_dtype, name=name, **kwargs)


def layer_norm(cfg: HasLayerNorm, name: str) -> nn.LayerNorm:
    """`torch.nn.LayerNorm` (two-pass variance, epsilon `cfg.layer_norm_eps`) in `cfg`'s dtypes."""
    return nn.LayerNorm(epsilon=cfg.layer_norm_eps, use_fast_variance=False, dtype=cfg.dtype,
                        param_dtype=cfg.param_dtype, name=name)
