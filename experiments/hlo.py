"""Reading a compiled XLA module: its instructions' metadata, and what is live at its memory peak.

`compile_with_dump(lowered)` compiles a `jax.jit(...).lower(...)` with XLA's dump switched on for
that one compile (`compiler_options`, so no global `XLA_FLAGS` are needed) and returns the dump
folder beside the executable. `peak_buffers(folder)` then reads two of the files XLA writes for the
optimized module:
- `*after_optimizations-live-range.txt`: the flattened schedule (while bodies included) and the
  values live at the point where the sum of live bytes is largest ("Live ranges at N (peak)");
- `*after_optimizations.txt`: the module, whose instructions carry the JAX name stack of the op
  that made them (`op_name` metadata), from which the model part and the phase (autodiff's
  transpose = backward) follow (`segearth_jax.flops.scope_of`).
The live-range peak counts every live value (parameters too), so it is the composition of the
peak, not a second opinion on `memory_analysis()`'s totals (XLA packs temporaries into one heap
whose size is `temp_size_in_bytes`).
"""

from __future__ import annotations

import collections
import dataclasses
import re
import tempfile
from pathlib import Path
from typing import Any

from segearth_jax.flops import scope_of

# One HLO instruction: `%name = <shape or (tuple shape)> opcode(`, then metadata.
INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = (\([^=]*?\)|\S+) ([\w\-]+)\(")
# One value of the peak section of a live-range dump: `name{index}: 1048576 bytes (...)`.
_PEAK_VALUE = re.compile(r"^\s+([\w.\-]+)\{([\d,]*)\}: (\d+) bytes")


def instructions(hlo_text: str) -> dict[str, tuple[str, str, str]]:
    """name -> (opcode, op_name metadata, result shape) for every instruction of a module's
    text. An instruction XLA made without metadata (a layout copy, a fusion of its own) takes
    that of its first operand that has one, followed through such instructions."""
    out, operands = {}, {}
    for line in hlo_text.splitlines():
        m = INSTRUCTION.match(line)
        if m:
            name, shape, opcode = m.groups()
            op_name = re.search(r'op_name="([^"]*)"', line)
            out[name] = (opcode, op_name.group(1) if op_name else "", shape)
            operands[name] = re.findall(r"%([\w.\-]+)", line[m.end():].split(")", 1)[0])
    for name, (opcode, op_name, shape) in out.items():
        seen, todo = {name}, list(operands[name])
        while not op_name and todo:
            nxt = todo.pop(0)
            if nxt in seen or nxt not in out:
                continue
            seen.add(nxt)
            op_name = out[nxt][1]
            todo += operands[nxt]
        out[name] = (opcode, op_name, shape)
    return out


def part_of(op_name: str, opcode: str, depth: int = 2) -> tuple[str, str]:
    """(part, phase) of an op from its metadata (`depth` module names); outside any module: its
    last primitive and the innermost jitted helper it is in."""
    stack = re.sub(r"^jit\([^)]*\)/", "", op_name)
    part, phase = scope_of(stack, depth)
    if not part:  # named by the innermost jitted helper (e.g. `_uniform`) and the primitive
        helper = re.findall(r"jit\((\w+)\)", stack)
        primitive = stack.rsplit("/", 1)[-1] if stack else f"({opcode}, no metadata)"
        part = f"other: {helper[-1] + ' ' if helper else ''}{primitive}"
    return part, phase


def compile_with_dump(lowered: Any, directory: str | Path | None = None) -> tuple[Any, Path]:
    """Compiles `lowered` with the HLO dump (text) of that compile in `directory` (a new
    temporary folder by default) -> (compiled, folder)."""
    folder = Path(directory or tempfile.mkdtemp(prefix="xla_dump_"))
    compiled = lowered.compile(compiler_options={"xla_dump_to": str(folder),
                                                 "xla_dump_hlo_as_text": True})
    return compiled, folder


@dataclasses.dataclass(frozen=True)
class Buffer:
    """One value live at the peak: the instruction that defines it and its place in the model."""

    name: str
    bytes: int
    shape: str
    opcode: str
    op_name: str
    part: str
    phase: str


@dataclasses.dataclass(frozen=True)
class PeakReport:
    peak_bytes: int  # sum of the live values at the peak (parameters included)
    buffers: list[Buffer]  # largest first

    def by_part(self) -> list[tuple[tuple[str, str], int]]:
        """(part, phase) -> bytes live at the peak, largest first."""
        total = collections.Counter()
        for b in self.buffers:
            total[(b.part, b.phase)] += b.bytes
        return total.most_common()


def _module_files(folder: Path, suffix: str) -> list[Path]:
    return sorted(folder.glob(f"*after_optimizations{suffix}"))


def peak_buffers(folder: str | Path, module: str = "", depth: int = 2) -> PeakReport:
    """The values live at the memory peak of the dumped module whose file name contains `module`
    (the largest such module when several match, e.g. `jit_step`)."""
    folder = Path(folder)
    ranges = [p for p in _module_files(folder, "-live-range.txt") if module in p.name]
    if not ranges:
        raise FileNotFoundError(f"no live-range dump for {module!r} in {folder}")
    live = max(ranges, key=lambda p: p.stat().st_size)
    hlo_path = live.with_name(live.name.replace("-live-range.txt", ".txt"))
    names = instructions(hlo_path.read_text())
    text = live.read_text().splitlines()
    start = next((i for i, line in enumerate(text) if re.match(r"\s*Live ranges at \d+ \(peak\)",
                                                             line)), None)
    if start is None:
        raise ValueError(f"{live} has no peak section")
    buffers = []
    for line in text[start + 1:]:
        m = _PEAK_VALUE.match(line)
        if not m:
            break
        name, index, size = m.group(1), m.group(2), int(m.group(3))
        opcode, op_name, shape = names.get(name, ("?", "", "?"))
        part, phase = part_of(op_name, opcode, depth)
        label = f"{name}{{{index}}}" if index else name
        buffers.append(Buffer(label, size, shape, opcode, op_name, part, phase))
    buffers.sort(key=lambda b: -b.bytes)
    return PeakReport(sum(b.bytes for b in buffers), buffers)


def print_peak(report: PeakReport, top: int = 15) -> None:
    gib = 2**30
    print(f"  live at the peak: {report.peak_bytes / gib:.2f} GiB in {len(report.buffers)} "
          f"values; by part:")
    for (part, phase), size in report.by_part()[:top]:
        print(f"    {size / gib:8.2f} GiB  {phase:<9} {part}")
    print(f"  the {top} largest values:")
    for b in report.buffers[:top]:
        print(f"    {b.bytes / gib:8.2f} GiB  {b.opcode:<14} {b.shape[:44]:<44} {b.part} "
              f"({b.phase}): {b.op_name[-80:]}")
