"""Shared fixtures: a tiny generated MAD class, generated once per test session."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # tests/mad_fixtures.py


@pytest.fixture(scope="session")
def tiny_class(tmp_path_factory) -> Path:
    """A 48 px pad-synth class: 210 posed training views, a few good and defective test queries."""
    from pad_nerfstudio.synth.generate import generate_dataset

    root = tmp_path_factory.mktemp("pad-synth")
    return generate_dataset(root, classes=["gorilla"], size=48, n_test_good=3, n_test_defect=2, progress=False)[0]
