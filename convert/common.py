"""Shared machinery of the PyTorch -> Flax converters: checkpoint readers and a strict rename table.

A converter is data: a list of `Rule`s (source-key regex -> our parameter path, transform) and
lists of intentional gaps (`Gap`: source keys we do not use, our parameters the checkpoint does not
provide). `convert_tensors` applies them against the expected parameter shapes (from
`jax.eval_shape` of our model) and raises one `ConversionError` that lists every missing,
unexpected and mis-shaped key at once.

Rules whose regex has a named group `layer` fill slot `layer` of a parameter stacked on axis 0
(our scanned layers); every slot must be filled. A rule's `fields` can derive the target's fields
and the slot from the match, for stacks that group several source layers per slot (Swin's
(W-MSA, SW-MSA) block pairs, the decoder's rounds over the feature levels: `stacked_fields`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import pickle
import re
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
from flax.traverse_util import flatten_dict, unflatten_dict
from safetensors import SafetensorError, safe_open

from segearth_jax import safe_pickle
from segearth_jax.errors import MissingFile, UserError, check_new_dir

Array = np.ndarray


class ConversionError(UserError, ValueError):
    """Raised with the complete diff between a checkpoint and the expected parameters."""


# ---------------------------------------------------------------------------------------------
# Transforms (PyTorch layout -> Flax layout).


def identity(x: Array) -> Array:
    return x


def linear(x: Array) -> Array:
    """nn.Linear weight [out, in] -> Dense kernel [in, out]."""
    return x.T


def conv2d(x: Array) -> Array:
    """nn.Conv2d weight OIHW -> Conv kernel HWIO."""
    return x.transpose(2, 3, 1, 0)


@dataclasses.dataclass(frozen=True)
class Rule:
    """Source keys matching `pattern` (re.fullmatch) go to `target` ('/'-path, `{group}` fields
    filled from the match) after `transform`. A `layer` group selects a slot on axis 0.

    A tuple of targets splits one source tensor (e.g. fused qkv): `transform` then returns one
    array per target.
    """

    pattern: str
    target: str | tuple[str, ...]
    transform: Callable[[Array], Array | tuple[Array, ...]] = identity
    # The match's groups -> more groups for the target (and `layer`, the slot), e.g. from a
    # source block index j: the position j % 2 in its pair and the slot j // 2.
    fields: Callable[[dict[str, str]], dict[str, Any]] | None = None


def stacked_fields(group: str, names: tuple[str, ...]) -> Callable[[dict[str, str]], dict]:
    """Source layer n (the match's `group`) -> {"pos": names[n % len(names)], "layer": n //
    len(names)}: slot n // k of the stack at position `pos` of a k-layer scan body."""
    k = len(names)
    return lambda g: {"pos": names[int(g[group]) % k], "layer": int(g[group]) // k}


def with_fields(rules: list[Rule], group: str, fields: Callable[[dict[str, str]], dict]
                ) -> list[Rule]:
    """`rules`, those whose pattern has the named `group` given `fields`."""
    return [dataclasses.replace(r, fields=fields) if f"(?P<{group}>" in r.pattern else r
            for r in rules]


def split_rows(n: int, then: Callable[[Array], Array] = identity
               ) -> Callable[[Array], tuple[Array, ...]]:
    """Splits a fused tensor into `n` equal parts along axis 0 (PyTorch's stacked q, k, v),
    then applies `then` to each part."""
    return lambda x: tuple(then(part) for part in np.split(x, n, axis=0))


@dataclasses.dataclass(frozen=True)
class Gap:
    """An intentional difference: keys matching `pattern` are not converted, because `reason`."""

    pattern: str
    reason: str


def linear_rules(src: str, dst: str) -> list[Rule]:
    """nn.Linear `src.{weight,bias}` -> Dense `dst/{kernel,bias}`."""
    return [Rule(src + r"\.weight", dst + "/kernel", linear), Rule(src + r"\.bias", dst + "/bias")]


def norm_rules(src: str, dst: str) -> list[Rule]:
    """nn.LayerNorm / GroupNorm `src.{weight,bias}` -> `dst/{scale,bias}`."""
    return [Rule(src + r"\.weight", dst + "/scale"), Rule(src + r"\.bias", dst + "/bias")]


# ---------------------------------------------------------------------------------------------
# Readers: every format yields (key, loader) so only one tensor is in memory at a time.

def _itemsize(dtype: str) -> int:
    """Bytes per element of a safetensors dtype name ("BF16" -> 2, "F8_E4M3" -> 1, "BOOL" -> 1),
    for the progress count."""
    bits = re.search(r"\d+", dtype)
    return max(int(bits.group()) // 8, 1) if bits else 1


def read_safetensors(path: Path) -> Iterator[tuple[str, Callable[[], Array], int]]:
    """(key, loader, nbytes) for each tensor of a .safetensors file, in file order, read with
    the `safetensors` library: the file is memory-mapped and each loader copies one tensor out
    (bfloat16 as ml_dtypes.bfloat16). A truncated or corrupt file is one ConversionError."""
    try:
        f = safe_open(path, framework="numpy")
    except SafetensorError as e:
        raise ConversionError(f"{path}: not a readable safetensors file ({e}): it is truncated "
                              "or corrupt; download it again") from None
    with f:
        for key in f.offset_keys():
            info = f.get_slice(key)
            dtype, shape = info.get_dtype(), info.get_shape()

            def loader(key=key, dtype=dtype):
                try:
                    return f.get_tensor(key)
                except (SafetensorError, AttributeError, TypeError) as e:
                    raise ConversionError(f"{path}: tensor {key!r} ({dtype}) cannot be read as a "
                                          f"numpy array: {e}") from None

            yield key, loader, math.prod(shape) * _itemsize(dtype)


def read_torch_bin(path: Path) -> Iterator[tuple[str, Callable[[], Array], int]]:
    """(key, loader, nbytes) for a `torch.save`d state dict, loaded with `weights_only=True`
    (no arbitrary pickled code runs) and memory-mapped."""
    import torch  # Only the converters' extra needs PyTorch.

    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # noqa: BLE001 - report the file with the reason.
        raise ConversionError(f"{path}: cannot load as a weights-only PyTorch file: {e}") from e
    for wrapper in ("model", "state_dict"):  # {"model": sd} (official Swin), Lightning-style
        if isinstance(state.get(wrapper), Mapping):
            state = state[wrapper]
            break
    for key in list(state):
        t = state[key]
        if not isinstance(t, torch.Tensor):
            raise ConversionError(f"{path}: entry {key!r} is a {type(t).__name__}, not a tensor")

        def loader(t=t):
            t = t.detach()
            if t.dtype == torch.bfloat16:
                return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
            return t.numpy()

        yield key, loader, t.numel() * t.element_size()


def hf_checkpoint_files(src: Path) -> list[Path]:
    """The weight files of an HF-layout directory: sharded (index JSON) or single file."""
    for index_name, single in (("model.safetensors.index.json", "model.safetensors"),
                               ("pytorch_model.bin.index.json", "pytorch_model.bin")):
        index = src / index_name
        if index.exists():
            weight_map = json.loads(index.read_text())["weight_map"]
            files = sorted(set(weight_map.values()))
            absent = [f for f in files if not (src / f).exists()]
            if absent:
                raise ConversionError(f"{index} names shards that are not in {src}: {absent}")
            return [src / f for f in files]
        if (src / single).exists():
            return [src / single]
    raise ConversionError(
        f"{src}: no model.safetensors[.index.json] or pytorch_model.bin[.index.json] found")


def hf_checkpoint_shapes(src: Path) -> dict[str, tuple[int, ...]]:
    """Key -> shape of every tensor of an HF-layout directory, without reading the tensors
    (safetensors headers; a PyTorch .bin is memory-mapped)."""
    shapes: dict[str, tuple[int, ...]] = {}
    for f in hf_checkpoint_files(src):
        if f.suffix == ".safetensors":
            try:
                with safe_open(f, framework="numpy") as h:
                    shapes.update({k: tuple(h.get_slice(k).get_shape()) for k in h.offset_keys()})
            except SafetensorError as e:
                raise ConversionError(f"{f}: not a readable safetensors file ({e})") from None
        else:
            shapes.update({k: tuple(load().shape) for k, load, _ in read_torch_bin(f)})
    return shapes


def count_layers(shapes: Mapping[str, Any], pattern: str) -> int:
    """1 + the largest layer index `(?P<layer>\\d+)` of `pattern` among the keys (0: none)."""
    found = [int(m.group("layer")) for k in shapes if (m := re.fullmatch(pattern, k))]
    return max(found) + 1 if found else 0


def check_sizes(where: str, inferred: Mapping[str, Any], declared: Mapping[str, Any]) -> None:
    """Raises a ConversionError listing every size `declared` (a config.json) gives that
    differs from the one `inferred` from the tensor shapes."""
    wrong = [f"{k}: {declared[k]} in config.json, {v} in the tensors"
             for k, v in inferred.items() if k in declared and declared[k] != v]
    if wrong:
        raise ConversionError(f"{where}: config.json disagrees with the checkpoint: "
                              + "; ".join(wrong))


def read_hf_checkpoint(src: Path) -> Iterator[tuple[str, Callable[[], Array], int]]:
    for f in hf_checkpoint_files(src):
        print(f"reading {f.name} ({f.stat().st_size / 2**30:.2f} GiB)", file=sys.stderr)
        yield from (read_safetensors(f) if f.suffix == ".safetensors" else read_torch_bin(f))


# ---------------------------------------------------------------------------------------------
# The strict conversion.


class Progress:
    """Prints tensors and bytes done with the rate, at most every `every` seconds."""

    def __init__(self, total_bytes: int | None = None, every: float = 2.0):
        self.total, self.every = total_bytes, every
        self.count = self.done = 0
        self.start = self.last = time.monotonic()

    def update(self, nbytes: int, final: bool = False) -> None:
        self.count += 1
        self.done += nbytes
        now = time.monotonic()
        if final or now - self.last >= self.every:
            self.last = now
            rate = self.done / max(now - self.start, 1e-9) / 2**20
            total = f" / {self.total / 2**30:.2f}" if self.total else ""
            print(f"  {self.count} tensors, {self.done / 2**30:.2f}{total} GiB, "
                  f"{rate:.0f} MiB/s", file=sys.stderr)


def convert_tensors(source: Iterator[tuple[str, Callable[[], Array], int]], rules: list[Rule],
                    expected: Mapping[str, Any], *, unused: list[Gap] = (),
                    not_in_checkpoint: list[Gap] = (), dtype: Any = None,
                    progress: Progress | None = None, dry_run: bool = False) -> dict[str, Any]:
    """Fills the expected parameter tree from a checkpoint's tensors, strictly.

    source: (key, loader, nbytes) triples; expected: nested dict of shape/dtype structs (e.g. from
    `jax.eval_shape`); unused: source keys deliberately not converted; not_in_checkpoint: our
    parameters the checkpoint deliberately lacks (left out of the result). dtype: output dtype
    (None: the expected leaf's dtype). Returns a nested dict of numpy arrays; with `dry_run`,
    only names and shapes are checked and the leaves are the expected specs (nothing allocated).
    """
    tree = _Filling({p: s for p, s in flatten_dict(expected, sep="/").items()
                     if not any(re.fullmatch(g.pattern, p) for g in not_in_checkpoint)},
                    dtype, dry_run)
    compiled = [(re.compile(r.pattern), r) for r in rules]
    for key, load, nbytes in source:
        if any(re.fullmatch(g.pattern, key) for g in unused):
            continue
        match = next(((m, r) for rx, r in compiled if (m := rx.fullmatch(key))), None)
        if match is None:
            tree.unexpected.append(key)
            continue
        m, rule = match
        groups = m.groupdict()
        if rule.fields is not None:
            groups = {**groups, **rule.fields(groups)}
        split = isinstance(rule.target, tuple)
        targets = [t.format(**groups) for t in (rule.target if split else (rule.target,))]
        values = rule.transform(load())
        layer = int(groups["layer"]) if "layer" in groups else None
        for target, value in zip(targets, values if split else (values,), strict=True):
            tree.put(key, target, value, layer)
        if progress:
            progress.update(nbytes)
    if progress:
        progress.update(0, final=True)
    tree.check()
    return unflatten_dict(tree.out, sep="/")


@dataclasses.dataclass
class _Filling:
    """The flat parameter tree `convert_tensors` fills, and what went wrong on the way."""

    expected: dict[str, Any]  # path -> shape/dtype spec
    dtype: Any
    dry_run: bool
    out: dict[str, Any] = dataclasses.field(default_factory=dict)
    filled: dict[str, set[int]] = dataclasses.field(default_factory=dict)  # stacked: layers
    unexpected: list[str] = dataclasses.field(default_factory=list)
    misshaped: list[str] = dataclasses.field(default_factory=list)
    duplicate: list[str] = dataclasses.field(default_factory=list)

    def put(self, key: str, target: str, value: Array, layer: int | None) -> None:
        """Checkpoint tensor `key` (transformed) -> `target`, or layer `layer` of it."""
        if target not in self.expected:
            self.unexpected.append(f"{key} (-> {target}, which the model does not have)")
            return
        spec = self.expected[target]
        shape = tuple(spec.shape)
        if layer is not None:
            if layer >= shape[0]:
                self.unexpected.append(f"{key} (layer {layer}, the model has {shape[0]})")
                return
            shape = shape[1:]
        if tuple(value.shape) != shape:
            self.misshaped.append(f"{key}: {tuple(value.shape)} after transform, {target} "
                                  f"expects {shape}")
            return
        dtype = self.dtype or spec.dtype
        if layer is None:
            if target in self.out:
                self.duplicate.append(f"{key} -> {target}")
            self.out[target] = spec if self.dry_run else np.asarray(value, dtype=dtype)
            return
        if target not in self.out:
            self.out[target] = spec if self.dry_run else np.zeros(spec.shape, dtype=dtype)
        if layer in self.filled.setdefault(target, set()):
            self.duplicate.append(f"{key} -> {target}[{layer}]")
        if not self.dry_run:
            self.out[target][layer] = value
        self.filled[target].add(layer)

    def check(self) -> None:
        """Raises one ConversionError listing every missing, unexpected, mis-shaped or duplicate
        entry (strict both ways)."""
        missing = []
        for path, spec in self.expected.items():
            if path not in self.out:
                missing.append(f"{path} {tuple(spec.shape)}")
            elif path in self.filled and len(self.filled[path]) != spec.shape[0]:
                absent = sorted(set(range(spec.shape[0])) - self.filled[path])
                missing.append(f"{path} layers {absent}")
        problems = [("missing (our parameter, no checkpoint key)", missing),
                    ("unexpected (checkpoint key, no rule)", self.unexpected),
                    ("mis-shaped", self.misshaped), ("duplicate", self.duplicate)]
        if any(items for _, items in problems):
            lines = ["checkpoint does not match the model:"]
            for title, items in problems:
                if items:
                    lines.append(f"  {len(items)} {title}:")
                    lines.extend(f"    {item}" for item in items)
            raise ConversionError("\n".join(lines))


def describe_gaps(unused: list[Gap], not_in_checkpoint: list[Gap]) -> str:
    lines = ["intentional gaps:"]
    lines += [f"  unused checkpoint keys {g.pattern}: {g.reason}" for g in unused]
    lines += [f"  parameters not in the checkpoint {g.pattern}: {g.reason}"
              for g in not_in_checkpoint]
    return "\n".join(lines)


def ensure_new_dir(path: os.PathLike) -> Path:
    """Creates the output directory `path`; `OutputExists` (a FileExistsError) if it is not
    empty."""
    path = Path(path).absolute()
    check_new_dir(path)
    path.mkdir(parents=True, exist_ok=True)
    return path


# ---------------------------------------------------------------------------------------------
# detectron2 pickles: numpy arrays in plain containers, read without running pickled code.

_PICKLE_ALLOWED = safe_pickle.NUMPY_ARRAYS | {("collections", "OrderedDict")}


def read_detectron2_pickle(path: Path) -> Iterator[tuple[str, Callable[[], Array], int]]:
    """(key, loader, nbytes) for each array of a detectron2 `.pkl` (`{"model": {name: array}}`).

    Only numpy arrays, dtypes and plain containers are unpickled; anything else (e.g. a callable
    smuggled into the file) raises `ConversionError` before it can run.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            data = safe_pickle.restricted_load(
                f, _PICKLE_ALLOWED, "numpy arrays and plain containers", encoding="latin1")
    except (pickle.UnpicklingError, EOFError, ValueError) as e:
        raise ConversionError(f"{path}: not a detectron2 checkpoint of numpy arrays: {e}") from e
    state = data.get("model", data) if isinstance(data, Mapping) else None
    if not isinstance(state, Mapping):
        raise ConversionError(f"{path}: expected a dict with a 'model' dict of arrays")
    for key, value in state.items():
        if not isinstance(value, np.ndarray):
            raise ConversionError(f"{path}: entry {key!r} is a {type(value).__name__}, "
                                  "not a numpy array")
        yield key, (lambda v=value: v), value.nbytes


# ---------------------------------------------------------------------------------------------
# The converters' shared command line and output.


def converter_parser(doc: str, src_help: str, variants, default_variant: str | None,
                     default_dtype: str = "float32") -> argparse.ArgumentParser:
    """`--src`, `--out`, `--variant`, `--dtype`; a converter adds its own flags to it. The
    description is the first paragraph of the converter's docstring `doc`."""
    parser = argparse.ArgumentParser(description=" ".join(doc.split("\n\n")[0].split()))
    parser.add_argument("--src", required=True, help=f"Required: the {src_help}.")
    parser.add_argument("--out", required=True,
                        help="Required: the output directory (new, or empty).")
    parser.add_argument("--variant", choices=sorted(variants), default=default_variant,
                        help="The named size preset (default: %s)." % (
                            default_variant or "the one of the source's widths, every size "
                            "its config.json and tensor shapes show read from the source"))
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default=default_dtype,
                        help="The dtype the parameters are stored in (default: %(default)s).")
    return parser


def run_converter(convert_fn: Callable[..., Path], args: argparse.Namespace, **extra: Any) -> None:
    """Calls `convert_fn(src, out, variant=, dtype=, **extra)` after checking, before any
    reading, that `--src` exists and `--out` is new. Called from a `cli.entry_point` main, so a
    `ConversionError` (a UserError) prints its message (the full diff) instead of a traceback."""
    if not os.path.exists(args.src):
        raise MissingFile(f"--src {args.src}: no such file or directory")
    if not extra.get("dry_run"):
        check_new_dir(args.out)
    out = convert_fn(args.src, args.out, variant=args.variant, dtype=args.dtype, **extra)
    print(f"done: {out}")


def write_converted(out: os.PathLike, params: Mapping[str, Any], spec: dict[str, Any]) -> Path:
    """Writes params (orbax) and model.json into the new directory `out`; returns it."""
    from segearth_jax import checkpoint

    out = ensure_new_dir(out)
    print(f"writing {out}", file=sys.stderr)
    checkpoint.save_params(out, params)
    checkpoint.write_model_spec(out, spec)
    return out
