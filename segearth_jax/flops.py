"""Matmul FLOPs of a JAX function, counted from its jaxpr (the numerator of MFU).

XLA's `compiled.cost_analysis()` counts the body of a `lax.scan` once, not once per iteration,
so for our scanned layer stacks (Phi, SigLIP, the pixel decoder) it reports a fraction of the
work. This counts what the traced program multiplies instead: every `dot_general` and
`conv_general_dilated`, 2 FLOPs per multiply-add, a scan's body times its length, a `cond`'s
costliest branch, through `jit`, `remat`, `custom_jvp`/`custom_vjp` and `shard_map` bodies. Element-
wise work, reductions and gathers (softmax, norms, the deformable-attention sampling, the loss's
point sampling) are not counted, as in the usual MFU convention (PaLM, appendix B).

What a traced train step multiplies is what autodiff kept: frozen towers no gradient reaches
have no backward; frozen matmuls inside the differentiated path get the activation gradient but
no weight gradient; a rematerialized forward is counted again in the backward. So the *model*
FLOPs of a step (for MFU) are the count of the step traced without remat; with remat it is the
hardware count (HFU). Attention is counted as the program computes it: through XLA's path the
full [T, S] score matrix also when causal (trace with `attention_impl='xla'`: cuDNN's fused
kernel is one opaque call). A `while_loop`'s body is counted once (its trip count is not static);
`FlopCount.while_loops` says how many were met. The jaxpr is counted as traced, before XLA's
dead-code elimination: a product nothing reads still counts (a train step reads its forward).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
from collections.abc import Callable
from typing import Any

import jax
from jax.extend import core

_CONV = "conv_general_dilated"


@dataclasses.dataclass
class FlopCount:
    """FLOPs by primitive ('dot_general', 'conv_general_dilated'); by (scope, phase): the Flax
    module path of the product (its first `depth` names, '' outside any module) and 'forward' or
    'backward' (a product of autodiff's transpose); and the while loops met."""

    by_primitive: dict[str, float] = dataclasses.field(default_factory=dict)
    by_scope: dict[tuple[str, str], float] = dataclasses.field(default_factory=dict)
    while_loops: int = 0

    @property
    def total(self) -> float:
        return sum(self.by_primitive.values())

    def add(self, other: FlopCount, times: float = 1.0) -> None:
        for k, v in other.by_primitive.items():
            self.by_primitive[k] = self.by_primitive.get(k, 0.0) + times * v
        for k, v in other.by_scope.items():
            self.by_scope[k] = self.by_scope.get(k, 0.0) + times * v
        self.while_loops += other.while_loops


def count_flops(fn: Callable, *args: Any, depth: int = 2, **kwargs: Any) -> FlopCount:
    """The matmul FLOPs of `fn(*args, **kwargs)`; args may be arrays or `jax.ShapeDtypeStruct`s
    (nothing is computed or compiled, only traced). `fn` may be jitted. `depth`: how many module
    names of a product's scope `by_scope` keeps."""
    closed = jax.make_jaxpr(fn)(*args, **kwargs)
    return jaxpr_flops(closed.jaxpr, depth=depth)


# Scopes that lowering adds around a loop's body in HLO metadata (not module names).
_LOOP_SCOPES = frozenset({"while", "body", "cond", "closed_call", "checkpoint", "remat"})


def scope_of(name_stack: str, depth: int) -> tuple[str, str]:
    """(module path, phase) of a product from its name stack, e.g.
    'transpose(jvp(SegEarthR2))/mllm/llm/model/layers/mlp/fc1' -> ('mllm/llm', 'backward'):
    autodiff's wrappers, the root module's class name, method scopes ('Cls.method') and the
    scopes HLO metadata puts around loop bodies ('while/body/closed_call') are dropped; the path
    ends at a transformation scope ('vmap(...)', an einsum's spec)."""
    phase = "backward" if "transpose(" in name_stack else "forward"
    names = []
    for part in name_stack.split("/"):
        while part.startswith(("jvp(", "transpose(")) and part.endswith(")"):
            part = part[part.index("(") + 1:-1]
        if re.fullmatch(r"\w+\.\w+", part) or part[:1].isupper() or part in _LOOP_SCOPES:
            continue  # a method ('Module.method'), the root module's class, a loop's body
        if not part.isidentifier():
            break  # an einsum or vmap scope: the module above is the scope
        names.append(part)
    return "/".join(names[:depth]), phase


def _prod(xs) -> int:
    return math.prod(int(x) for x in xs)


def _eqn_flops(eqn) -> float:
    name = eqn.primitive.name
    if name == "dot_general":
        (lhs_contract, _), _ = eqn.params["dimension_numbers"]
        lhs = eqn.invars[0].aval
        out = eqn.outvars[0].aval
        return 2.0 * _prod(out.shape) * _prod(lhs.shape[d] for d in lhs_contract)
    if name == _CONV:
        # Per output element: (kernel's input features) x (kernel window) multiply-adds; with
        # lhs_dilation (the input gradient of a strided conv) the inserted zeros count too.
        rhs = eqn.invars[1].aval
        out = eqn.outvars[0].aval
        rhs_spec = eqn.params["dimension_numbers"].rhs_spec  # (out feat, in feat, *spatial)
        window = _prod(rhs.shape[d] for d in rhs_spec[2:])
        return 2.0 * _prod(out.shape) * rhs.shape[rhs_spec[1]] * window
    return 0.0


def _sub_jaxprs(value: Any):
    """The jaxprs held in one equation parameter (a jaxpr, a closed one, or a tuple of them)."""
    if isinstance(value, core.ClosedJaxpr):
        yield value.jaxpr
    elif isinstance(value, core.Jaxpr):
        yield value
    elif isinstance(value, (tuple, list)):
        for v in value:
            yield from _sub_jaxprs(v)


def jaxpr_flops(jaxpr: core.Jaxpr, depth: int = 2, prefix: str = "") -> FlopCount:
    """The count of one (open) jaxpr; see the module docstring for the rules. `prefix`: the
    name stack of the equation that holds this jaxpr (an inner jaxpr's stacks are relative)."""
    count = FlopCount()
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        stack = "/".join(p for p in (prefix, str(eqn.source_info.name_stack)) if p)
        sub = functools.partial(jaxpr_flops, depth=depth, prefix=stack)
        if name in ("dot_general", _CONV):
            flops = _eqn_flops(eqn)
            count.by_primitive[name] = count.by_primitive.get(name, 0.0) + flops
            key = scope_of(stack, depth)
            count.by_scope[key] = count.by_scope.get(key, 0.0) + flops
        elif name == "scan":
            count.add(sub(eqn.params["jaxpr"].jaxpr), times=eqn.params["length"])
        elif name == "cond":
            branches = [sub(b.jaxpr) for b in eqn.params["branches"]]
            count.add(max(branches, key=lambda c: c.total))
        elif name == "while":
            count.add(sub(eqn.params["body_jaxpr"].jaxpr))
            count.add(sub(eqn.params["cond_jaxpr"].jaxpr))
            count.while_loops += 1
        else:  # pjit, remat, custom_jvp_call, custom_vjp_call, shard_map, closed_call, ...
            for value in eqn.params.values():
                for jx in _sub_jaxprs(value):
                    count.add(sub(jx))
    return count
