"""Evaluation options that need no model: the protocol and question rules."""

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
