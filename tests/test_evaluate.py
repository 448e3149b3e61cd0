"""Evaluation options that need no model: the protocol and question rules, and the check that
the config prompts as the model was trained."""

from __future__ import annotations

import pytest

from segearth_jax.evaluate import (
    _Subset,
    first_question_per_image,
    resolve_mode,
    resolve_questions,
)


def test_modes_default_by_preset():
    """teacher_forced is the segearth_r2 preset's default (the paper's numbers were made so)."""
    assert resolve_mode("auto", "segearth_r2") == "teacher_forced"
    assert resolve_mode(None, "segearth_r1") == "generate"
    assert resolve_mode("generate", "segearth_r2") == "generate"
    with pytest.raises(ValueError, match="teacher_forced"):
        resolve_mode("forced", "segearth_r2")


def test_first_question_per_image_is_the_segearth_r1_rule():
    """EarthReason builds one example per question; the SegEarth-R1 evaluation scores the first
    question of each image (the default for its preset)."""
    records = [dict(id=f"{stem}_{q}", image_name=f"{stem}.png")
               for stem, n in (("a", 3), ("b", 1), ("c", 2)) for q in range(n)]
    keep = first_question_per_image(records)
    assert [records[i]["id"] for i in keep] == ["a_0", "b_0", "c_0"]
    subset = _Subset(records, keep)
    assert len(subset) == 3 and subset[2]["id"] == "c_0"
    assert resolve_questions("auto", "segearth_r1") == "first"
    assert resolve_questions(None, "segearth_r2") == "all"
    with pytest.raises(ValueError, match="first"):
        resolve_questions("one", "lisa")


def _model_dir(tmp_path, **input_changes):
    """A model directory whose model.json records configs/tiny.py's inputs, changed by
    `input_changes` (no parameters: the check runs before any are read)."""
    from configs import tiny
    from segearth_jax import checkpoint
    from segearth_jax.input.settings import Settings

    spec = {**Settings.from_config(tiny.get_config().data).to_spec(), **input_changes}
    tmp_path.mkdir(exist_ok=True)
    checkpoint.write_model_spec(tmp_path, {"kind": "segearth_r2", "input": spec})
    return tmp_path


def test_config_prompt_must_be_the_models(tmp_path):
    """The loader prompts with config.data; the model.json "input" says how the model was
    trained. The image views and the prompt must agree; sequence capacity may differ."""
    from configs import tiny
    from segearth_jax import errors
    from segearth_jax.evaluate import check_model_inputs

    data = tiny.get_config().data
    check_model_inputs(data, _model_dir(tmp_path / "same"))
    check_model_inputs(data, _model_dir(tmp_path / "longer", max_len=data.max_len * 2,
                                        max_prompt_len=data.max_prompt_len * 2))
    other = _model_dir(tmp_path / "official", official_prompt=True, seg_in_prompt=True)
    with pytest.raises(errors.BadValue) as e:
        check_model_inputs(data, other)
    msg = str(e.value)
    assert str(other / "model.json") in msg and "\n" not in msg
    assert "--config.data.official_prompt=True" in msg
    assert "--config.data.seg_in_prompt=True" in msg and "template" not in msg
    with pytest.raises(errors.BadValue, match="--config.data.image_size=256"):
        check_model_inputs(data, _model_dir(tmp_path / "canvas", image_size=256))


def test_evaluate_cli_refuses_another_prompt_than_the_models(tmp_path):
    """As a user runs it: one `error:` line naming the flags, exit 2, before any loading."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    model = _model_dir(tmp_path / "model", official_prompt=True, seg_in_prompt=True)
    root = Path(__file__).resolve().parents[1]
    p = subprocess.run([sys.executable, "-m", "segearth_jax.evaluate", "--config",
                        "configs/tiny.py", "--checkpoint", str(model)], cwd=root,
                       env={**os.environ, "PYTHONPATH": str(root), "JAX_PLATFORMS": "cpu"},
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 2, p.stderr[-3000:]
    lines = p.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and "Traceback" not in p.stderr, p.stderr[-3000:]
    assert "--config.data.official_prompt=True" in lines[-1]
    assert str(model / "model.json") in lines[-1]
