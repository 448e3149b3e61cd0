"""LoRA (Hu et al. 2021) as a drop-in Dense, chosen per module by a regex over module paths.

`LoRADense` keeps the base Dense's parameter names (`kernel` [in, out], `bias` [out]) so that
converters and frozen-parameter rules are unchanged, and adds `lora_a` [in, r] (PEFT's
Kaiming-uniform init) and `lora_b` [r, out] (zeros). The forward computes
`x @ W + b + dropout(x) @ A @ B * alpha / r`: the low-rank path is never folded into W inside the
forward; `merge_lora` folds it for export.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class LoRAConfig:
    """rank 0 disables LoRA. `targets` is matched (re.fullmatch) against '/'-joined module paths."""

    rank: int = 0
    alpha: float = 16.0
    dropout: float = 0.05
    targets: str = r".*/(q_proj|v_proj)"

    @property
    def scaling(self) -> float:
        return self.alpha / self.rank if self.rank else 0.0

    def is_target(self, module_path: str) -> bool:
        return self.rank > 0 and re.fullmatch(self.targets, module_path) is not None


# PEFT initializes lora_A with kaiming_uniform_(a=sqrt(5)): U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
lora_a_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


class LoRADense(nn.Module):
    """Dense over the last axis: [..., in] -> [..., features], with an optional LoRA branch."""

    features: int
    use_bias: bool = True
    rank: int = 0
    alpha: float = 16.0
    dropout: float = 0.0
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    kernel_init: Any = nn.initializers.lecun_normal()

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool = True) -> jax.Array:
        in_features = x.shape[-1]
        kernel = self.param("kernel", self.kernel_init, (in_features, self.features),
                            self.param_dtype)
        x = x.astype(self.dtype)
        y = jnp.dot(x, kernel.astype(self.dtype))
        if self.use_bias:
            bias = self.param("bias", nn.initializers.zeros, (self.features,), self.param_dtype)
            y = y + bias.astype(self.dtype)
        if self.rank > 0:
            a = self.param("lora_a", lora_a_init, (in_features, self.rank), self.param_dtype)
            b = self.param("lora_b", nn.initializers.zeros, (self.rank, self.features),
                           self.param_dtype)
            h = nn.Dropout(rate=self.dropout)(x, deterministic=deterministic)
            h = jnp.dot(jnp.dot(h, a.astype(self.dtype)), b.astype(self.dtype))
            y = y + h * jnp.asarray(self.alpha / self.rank, self.dtype)
        return y


def dense(parent: nn.Module, name: str, features: int, lora: LoRAConfig, *, use_bias: bool = True,
          dtype: Any = jnp.float32, param_dtype: Any = jnp.float32) -> LoRADense:
    """A `LoRADense` named `name` under `parent`, with LoRA iff its path matches `lora.targets`."""
    path = "/".join((*parent.path, name))
    rank = lora.rank if lora.is_target(path) else 0
    return LoRADense(features, use_bias=use_bias, rank=rank, alpha=lora.alpha,
                     dropout=lora.dropout, dtype=dtype, param_dtype=param_dtype, name=name)


def lora_module_paths(params: Mapping[str, Any], prefix: str = "") -> list[str]:
    """'/'-joined paths of every module holding LoRA factors (with `lora_a`)."""
    out = []
    for k, v in params.items():
        if isinstance(v, Mapping):
            path = f"{prefix}/{k}" if prefix else k
            if "lora_a" in v:
                out.append(path)
            out.extend(lora_module_paths(v, path))
    return out


def merge_lora(params: Mapping[str, Any], scaling: float) -> dict[str, Any]:
    """Folds every `kernel + lora_a @ lora_b * scaling` into `kernel` and drops the factors.

    Works for stacked (scanned) layers too: `lora_a` [..., in, r] @ `lora_b` [..., r, out].
    The merged tree loads into the same model built with `LoRAConfig(rank=0)`.
    """
    out = {}
    for k, v in params.items():
        if isinstance(v, Mapping):
            v = merge_lora(v, scaling)
            if "lora_a" in v:
                delta = jnp.matmul(v.pop("lora_a").astype(jnp.float32),
                                   v.pop("lora_b").astype(jnp.float32)) * scaling
                v["kernel"] = (v["kernel"].astype(jnp.float32) + delta).astype(v["kernel"].dtype)
        out[k] = v
    return out
