"""Render (engine/render.py): the Assessment as canonical JSON or as a clinician's text report."""
from __future__ import annotations

from leukodx.engine.render import to_text

from conftest import base_case


def test_the_output_says_it_supports_clinical_judgement(engine):
    a = engine.assess(base_case())
    assert "does not replace clinical judgement" in a.disclaimer
    assert "does not replace clinical judgement" in to_text(a)
