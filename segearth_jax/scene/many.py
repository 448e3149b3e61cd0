"""Many scenes: a glob or a list file of rasters, sharded over independent jobs (`--shard I/N`:
every N-th scene from the I-th, so a SLURM array or an indexed Kubernetes job maps a region
without a coordinator), one folder per scene, resumable, a bad scene reported and skipped."""

from __future__ import annotations

import glob
import json
import os
import traceback
from pathlib import Path
from typing import Any

from segearth_jax.scene.core import run_scene
from segearth_jax.scene.raster import SceneError, open_scene

LIST_SUFFIXES = (".txt", ".lst", ".list")  # --scene FILE with one of these: one path a line


def list_scenes(spec: str) -> tuple[list[str], bool]:
    """`--scene` -> (sorted raster paths, one folder per scene?). A list file (LIST_SUFFIXES:
    one path a line, relative to the file, `#` comments) or a glob (quoted) take folders; a
    single raster path writes into --out itself."""
    path = Path(spec)
    if path.suffix.lower() in LIST_SUFFIXES and path.is_file():
        lines = [ln.strip() for ln in path.read_text().splitlines()]
        files = [str(path.parent / ln) for ln in lines if ln and not ln.startswith("#")]
        if not files:
            raise SceneError(f"--scene {spec}: the list is empty")
        return files, True
    if glob.has_magic(spec):
        files = sorted(glob.glob(spec, recursive=True))
        if not files:
            raise SceneError(f"--scene {spec}: no file matches")
        return files, True
    if not path.is_file():
        raise SceneError(f"--scene {spec}: no such file")
    return [spec], False


def parse_shard(spec: str | None) -> tuple[int, int]:
    """`--shard I/N` -> (I, N), 0 <= I < N; None -> (0, 1)."""
    if spec is None:
        return 0, 1
    try:
        i, n = (int(x) for x in spec.split("/"))
    except ValueError:
        raise SceneError(f"--shard {spec}: expected I/N, e.g. 0/4") from None
    if not 0 <= i < n:
        raise SceneError(f"--shard {spec}: need 0 <= I < N")
    return i, n


def shard(items: list[str], index: int, count: int) -> list[str]:
    """Every `count`-th item from `index` (the shards of 0..count-1 partition `items`)."""
    return items[index::count]


def scene_names(files: list[str]) -> list[str]:
    """Folder names: the stems, made unique with their relative folders where stems collide."""
    stems = [Path(f).stem for f in files]
    common = Path(os.path.commonpath([str(Path(f).resolve().parent) for f in files]))
    return [s if stems.count(s) == 1 else
            str(Path(f).resolve().relative_to(common).with_suffix("")).replace(os.sep, "__")
            for s, f in zip(stems, files, strict=True)]


def prompt_folders(prompts: list[str], single: bool) -> list[str]:
    """Per question, its folder inside a scene's: "" for one --prompt, q1, q2, ... for
    --prompts (the question itself is in its scene.json)."""
    return [""] if single else [f"q{k + 1}" for k in range(len(prompts))]


def predict_scenes(predictor: Any, spec: str, prompts: list[str], out: Path, *,
                   single_prompt: bool = True, shard_spec: str | None = None,
                   open_kwargs: dict[str, Any] | None = None,
                   run_kwargs: dict[str, Any] | None = None) -> dict[str, Any]:
    """Runs this shard's scenes of `spec`, all `prompts` each. A scene whose every scene.json
    exists is skipped (a rerun resumes); a scene that fails is reported (`failures.jsonl` in
    `out`) and the next one runs (a single raster's failure is raised). -> counts done /
    skipped / failed, and the scenes' folders."""
    from tqdm import tqdm

    files, folders = list_scenes(spec)
    index, count = parse_shard(shard_spec)
    names = dict(zip(files, scene_names(files), strict=True))
    mine = shard(files, index, count)
    subdirs = prompt_folders(prompts, single_prompt)
    out.mkdir(parents=True, exist_ok=True)
    counts = {"scenes": len(mine), "done": 0, "skipped": 0, "failed": 0, "folders": []}
    overall = tqdm(total=len(mine), unit="scene", desc="scenes", position=0, dynamic_ncols=True)
    windows = tqdm(total=0, unit="window", desc="windows", position=1, dynamic_ncols=True)
    for f in mine:
        folder = out / names[f] if folders else out
        outs = [folder / d for d in subdirs]
        counts["folders"].append(str(folder))
        if all((o / "scene.json").exists() for o in outs):
            counts["skipped"] += 1
            overall.update(1)
            continue
        windows.set_description(f"{names[f]}")
        try:
            scene = open_scene(f, **(open_kwargs or {}))
            try:
                done = run_scene(predictor, scene, prompts, outs, bar=windows,
                                 **(run_kwargs or {}))
            finally:
                scene.close()
            counts["done"] += 1
            for s in done:
                tqdm.write(f"{f}: {s['windows']} windows ({s['windows_skipped_nodata']} all "
                           f"nodata, skipped), targets {s['targets'] or 'none'}, "
                           f"{s['polygons']} polygon(s)")
        except Exception as e:  # noqa: BLE001  (one bad scene never stops the others)
            if not folders:
                raise  # the one scene asked for: its own message (or traceback)
            counts["failed"] += 1
            message = str(e) if isinstance(e, SceneError) else f"{type(e).__name__}: {e}"
            tqdm.write(f"failed {f}: {message}")
            with open(out / "failures.jsonl", "a") as log:
                log.write(json.dumps({"scene": f, "error": message,
                                      "traceback": None if isinstance(e, SceneError)
                                      else traceback.format_exc()}) + "\n")
        overall.update(1)
    windows.close()
    overall.close()
    return counts
