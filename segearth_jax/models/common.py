"""What the model parts share: configs with named presets (`from_variant`, `preset`) and an
explicit, strict dictionary form (`from_dict` / `to_dict`, what config files and model.json
hold); the layer-stack switches (`scan`, `remat_policy`, one vocabulary for every stack); the
Dense / LayerNorm layers built in the config's compute and parameter dtypes."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar, Protocol, TypeVar

import flax.linen as nn
import jax

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

    @classmethod
    def preset(cls, name: str, *, exclude: tuple[str, ...] = ("dtype", "param_dtype"),
               **overrides: Any) -> dict[str, Any]:
        """The named preset expanded into every field (a config file's or model.json's form),
        less `exclude` (the dtypes, or sizes another part gives)."""
        return cls.from_variant(name, **overrides).to_dict(exclude=exclude)

    def to_dict(self, *, exclude: tuple[str, ...] = ("dtype", "param_dtype")) -> dict[str, Any]:
        """Every field but `exclude`, as plain values (nested configs as dicts, tuples as lists)."""
        plain = lambda v: (dataclasses.asdict(v) if dataclasses.is_dataclass(v)
                           else list(v) if isinstance(v, tuple) else v)
        return {f.name: plain(getattr(self, f.name)) for f in dataclasses.fields(self)
                if f.name not in exclude}

    @classmethod
    def from_dict(cls: type[C], fields: Mapping[str, Any], **given: Any) -> C:
        """From a config file's or model.json's dict holding every field except `given` (the
        dtypes, sizes derived from another part). A missing or unknown key raises, naming it."""
        want = {f.name for f in dataclasses.fields(cls)} - given.keys()
        have = set(fields)
        if have != want:
            raise ValueError(f"{cls._kind} config: missing keys {sorted(want - have)}, unknown "
                             f"keys {sorted(have - want)}")
        tupled = {k: tuple(v) if isinstance(v, list) else v for k, v in dict(fields).items()}
        return cls(**tupled, **given)


# The `remat_policy` of every layer stack: what each scanned layer keeps for the backward pass
# ("none": everything, no recomputation; "full": nothing, the layer is recomputed; "dots": the
# matmul outputs; "dots_no_batch": those without batch dimensions).
REMAT_POLICIES: dict[str, Any] = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}


def check_stack(kind: str, scan: bool, remat_policy: str, extra: tuple[str, ...] = ()) -> None:
    """Raises a ValueError naming `kind` for a `remat_policy` outside REMAT_POLICIES (+ `extra`)
    or a non-bool `scan`."""
    if remat_policy not in (*REMAT_POLICIES, *extra):
        raise ValueError(f"{kind} remat_policy={remat_policy!r}: one of "
                         f"{[*REMAT_POLICIES, *extra]}")
    if not isinstance(scan, bool):
        raise ValueError(f"{kind} scan={scan!r}: expected true or false")


def layer_stack(layer: type[nn.Module], *, scan: bool, remat_policy: str, length: int,
                **scan_kwargs: Any) -> Any:
    """`length` copies of `layer` as one `nn.scan` (parameters stacked on axis 0), each layer
    rematerialized by `remat_policy` (a REMAT_POLICIES key; other values: no remat).

    scan=False unrolls the loop at trace time (`lax.scan` with `unroll=length`): every layer is
    its own code in the compiled program (no while loop; longer compiles, sometimes faster
    steps, per-layer HLO for debugging) with the same parameter tree and the same numbers, so
    checkpoints serve both settings and no converter is needed between them.
    """
    policy = REMAT_POLICIES.get(remat_policy)
    if remat_policy in REMAT_POLICIES and remat_policy != "none":
        layer = nn.remat(layer, policy=policy, prevent_cse=False)
    return nn.scan(layer, length=length, unroll=1 if scan else length, **scan_kwargs)


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
