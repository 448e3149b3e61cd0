"""Every entry point as a user runs it (`python -m ...`, a fresh interpreter): `--help` exits 0,
and each expected failure is one `error:` line on stderr naming the file or flag, with exit
status `cli.EXIT_USER` and no traceback. All failures happen before anything is compiled; the
processes run a few at a time."""

from __future__ import annotations

import concurrent.futures
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from segearth_jax import cli

ROOT = Path(__file__).resolve().parents[1]
PROGRAMS = ["segearth_jax.train", "segearth_jax.evaluate", "segearth_jax.predict",
            "segearth_jax.generate", "segearth_jax.app", "segearth_jax.export", "convert.mipha",
            "convert.swin", "convert.mask2former", "convert.segearth_r2", "convert.tiny_mipha",
            "data.builders", "data.synthetic", "experiments.eval_protocols"]


def _cases(t: Path) -> dict[str, tuple[list[str], list[str], bool]]:
    """name -> (command line, strings the error line must contain, whether progress lines may
    precede it). Writes the files the cases need under `t`."""
    (t / "full").mkdir()
    (t / "full" / "keep.txt").write_text("x")
    (t / "not_a_model").mkdir()
    cv2.imwrite(str(t / "img.png"), np.zeros((8, 8, 3), np.uint8))
    (t / "swin.pth").write_bytes(b"")
    shards = t / "mipha_src"  # a sharded HF checkpoint whose first shard's header is cut short
    shards.mkdir()
    names = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    (shards / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {"a": names[0], "b": names[1]}}))
    header = json.dumps({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}).encode()
    (shards / names[0]).write_bytes(struct.pack("<Q", len(header)) + header[:20])
    (shards / names[1]).write_bytes(struct.pack("<Q", len(header)) + header + bytes(8))
    train = ["segearth_jax.train", "--config", "configs/tiny.py", "--workdir", str(t / "wd"),
             f"--config.data.data_dir={t / 'tfds'}"]
    ckpt = str(t / "no_ckpt")
    return {
        "train_unbuilt_dataset": (train, ["synthetic is not built", "--config.data.manual_dir",
                                          str(t / "tfds")], False),
        "train_missing_manual_dir": (train + [f"--config.data.manual_dir={t / 'raw'}"],
                                     ["--config.data.manual_dir", str(t / "raw")], False),
        "train_missing_config": (["segearth_jax.train", "--config", str(t / "nope.py"),
                                  "--workdir", str(t / "wd")], ["--config", "nope.py"], False),
        "train_unknown_override": (train + ["--config.data.colour=1"],
                                   ["--config.data.colour", "no field"], False),
        "train_bad_override": (train + ["--config.optim.lr=fast"], ["--config.optim.lr"], False),
        "train_no_workdir": (["segearth_jax.train", "--config", "configs/tiny.py"],
                             ["--workdir"], False),
        "evaluate_missing_checkpoint": (["segearth_jax.evaluate", "--config", "configs/tiny.py",
                                         "--checkpoint", ckpt], ["--checkpoint", ckpt], False),
        "predict_missing_checkpoint": (["segearth_jax.predict", "--checkpoint", ckpt, "--image",
                                        str(t / "img.png"), "--prompt", "x"],
                                       ["--checkpoint", ckpt], False),
        "predict_not_a_model": (["segearth_jax.predict", "--checkpoint", str(t / "not_a_model"),
                                 "--image", str(t / "img.png"), "--prompt", "x"],
                                [str(t / "not_a_model" / "model.json")], False),
        "predict_missing_image": (["segearth_jax.predict", "--checkpoint",
                                   str(t / "not_a_model"), "--image",
                                   str(t / "no.png"), "--prompt", "x"], ["no.png"], False),
        "generate_missing_checkpoint": (["segearth_jax.generate", "--model", ckpt, "--prompt",
                                         "x"], ["--checkpoint", ckpt], False),
        "export_missing_workdir": (["segearth_jax.export", "--workdir", str(t / "no_run")],
                                   ["--workdir", str(t / "no_run")], False),
        "export_not_a_run": (["segearth_jax.export", "--workdir", str(t / "not_a_model")],
                             [str(t / "not_a_model" / "config.json"), "--workdir"], False),
        "mipha_truncated_shard": (["convert.mipha", "--src", str(shards), "--out", str(t / "o"),
                                   "--variant", "tiny"], [names[0]], True),
        "converter_existing_out": (["convert.swin", "--src", str(t / "swin.pth"), "--out",
                                    str(t / "full")], ["--out", str(t / "full")], False),
        "converter_missing_src": (["convert.segearth_r2", "--src", str(t / "no_src"), "--out",
                                   str(t / "o2")], ["--src", str(t / "no_src")], False),
        "builders_missing_manual_dir": (["data.builders", "lasers", "--manual-dir",
                                         str(t / "raw"), "--data-dir", str(t / "tfds")],
                                        ["--manual-dir", str(t / "raw")], False),
        "builders_old_flag_spelling": (["data.builders", "lasers", "--manual_dir",
                                        str(t / "raw"), "--data_dir", str(t / "tfds")],
                                       ["--manual-dir", str(t / "raw")], False),
        "app_missing_checkpoint": (["segearth_jax.app", "--checkpoint", ckpt],
                                   ["--checkpoint", ckpt], False),
        "app_not_a_model": (["segearth_jax.app", "--checkpoint", str(t / "not_a_model")],
                            [str(t / "not_a_model"), "model.json"], False),
        "synthetic_existing_out": (["data.synthetic", "--out", str(t / "full"), "--n", "2"],
                                   ["--out", str(t / "full"), "--overwrite"], False),
    }


def _run(args: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "JAX_PLATFORMS": "cpu"}
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict[str, tuple[subprocess.CompletedProcess, list[str], bool]]:
    """Runs every case (and `--help` of every program) once, four processes at a time."""
    cases = _cases(tmp_path_factory.mktemp("cli"))
    commands = {f"help:{p}": [p, "--help"] for p in PROGRAMS}
    commands.update({name: args for name, (args, _, _) in cases.items()})
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        done = dict(zip(commands, pool.map(_run, commands.values()), strict=True))
    return {name: (done[name], *cases.get(name, ([], [], False))[1:]) for name in done}


@pytest.mark.parametrize("program", PROGRAMS)
def test_help_exits_0(results, program):
    p, _, _ = results[f"help:{program}"]
    assert p.returncode == 0, p.stderr[-3000:]
    assert "--" in p.stdout and "Traceback" not in p.stderr


@pytest.mark.parametrize("case", [
    "train_unbuilt_dataset", "train_missing_manual_dir", "train_missing_config",
    "train_unknown_override", "train_bad_override", "train_no_workdir",
    "evaluate_missing_checkpoint", "predict_missing_checkpoint", "predict_not_a_model",
    "predict_missing_image", "generate_missing_checkpoint", "mipha_truncated_shard",
    "converter_existing_out", "converter_missing_src", "builders_missing_manual_dir",
    "builders_old_flag_spelling", "app_missing_checkpoint", "app_not_a_model",
    "synthetic_existing_out"])
def test_expected_failure_is_one_line(results, case):
    p, needles, progress = results[case]
    assert p.returncode == cli.EXIT_USER, (p.returncode, p.stderr[-3000:])
    assert "Traceback" not in p.stderr, p.stderr[-3000:]
    lines = p.stderr.strip().splitlines()
    if progress:  # a converter's gap list and "reading <shard>" come first
        assert [ln for ln in lines if ln.startswith("error:")] == lines[-1:], p.stderr
    else:
        assert len(lines) == 1, p.stderr
    line = lines[-1]
    assert line.startswith("error: "), line
    for needle in needles:
        assert needle in line, (needle, line)


def test_train_names_the_config_flag(results):
    """The dataset hint names `--config.data.manual_dir`, the flag train has (not data.builders'
    `--manual_dir`)."""
    line = results["train_unbuilt_dataset"][0].stderr.strip()
    assert "--manual_dir" not in line.replace("--config.data.manual_dir", "")


def test_entry_point_in_process(tmp_path, capsys):
    """The decorator itself: a UserError exits 2 with its message; a bug keeps its exception."""

    @cli.entry_point
    def fails(kind: str) -> None:
        if kind == "user":
            raise cli.OutputExists(f"--out {tmp_path} exists")
        raise KeyError("a bug")

    with pytest.raises(SystemExit) as e:
        fails("user")
    assert e.value.code == cli.EXIT_USER
    assert capsys.readouterr().err == f"error: --out {tmp_path} exists\n"
    with pytest.raises(KeyError):
        fails("bug")
    assert isinstance(cli.OutputExists("x"), FileExistsError)
    assert isinstance(cli.MissingFile("x"), FileNotFoundError)


def test_library_raise_sites_are_user_errors(tmp_path):
    """The expected failures raised below the entry points are UserErrors naming the path."""
    from convert.common import ConversionError, read_safetensors
    from segearth_jax import checkpoint, text

    for call in (lambda: text.load_tokenizer(tmp_path / "no_tok"),
                 lambda: checkpoint.read_model_spec(tmp_path / "no_model"),
                 lambda: checkpoint.restore_params(tmp_path / "no_model")):
        with pytest.raises(cli.MissingFile, match="no_"):
            call()
    # Header intact, data cut short (an interrupted download).
    header = json.dumps({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}).encode()
    shard = tmp_path / "cut.safetensors"
    shard.write_bytes(struct.pack("<Q", len(header)) + header + bytes(8))
    with pytest.raises(ConversionError, match="cut.safetensors") as e:
        list(read_safetensors(shard))
    assert isinstance(e.value, cli.UserError)


# argparse programs (the absl ones print their flags' own help strings, checked by `--help`).
ARGPARSE_PROGRAMS = ["segearth_jax.generate", "segearth_jax.app", "convert.mipha",
                     "convert.swin", "convert.mask2former", "convert.segearth_r2",
                     "convert.tiny_mipha", "data.builders", "data.synthetic"]


@pytest.mark.parametrize("program", ARGPARSE_PROGRAMS)
def test_help_texts_are_full_sentences(program, monkeypatch):
    """The description and every option's help end a sentence; required options say so."""
    import argparse
    import importlib

    class Parsed(Exception):
        pass

    seen = []

    def capture(self, *args, **kwargs):
        seen.append(self)
        raise Parsed

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", capture)
    with pytest.raises(Parsed):
        importlib.import_module(program).main([])
    (parser,) = seen
    description = " ".join((parser.description or "").split())
    assert description.endswith((".", ":")), description
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        assert action.help and action.help.rstrip().endswith("."), (action.dest, action.help)
        if action.required and action.option_strings:
            assert action.help.startswith("Required"), (action.dest, action.help)


@pytest.mark.parametrize("program", ["segearth_jax.train", "segearth_jax.evaluate",
                                     "experiments.eval_protocols"])
def test_absl_required_flags_say_so_without_a_default(results, program):
    """`--config` of the absl programs reads 'Required' and shows no `(default: 'None')`."""
    text = results[f"help:{program}"][0].stdout
    start = text.index("  --config:")
    entry = text[start:text.index("\n  --", start + 1)]
    assert "Required" in entry and "default" not in entry, entry
