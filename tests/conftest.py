"""Shared fixtures: quiet TensorFlow, a small dataset folder, a live Streamlit server and a browser."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "-1")
os.environ.setdefault("CXR_OFFLINE", "1")  # never try the network (cxrcore.train.model.imagenet_weights_reachable)
# A teacher's classroom settings in the shell must not change what the tests see (they set their own).
for _variable in ("CXR_CLASSROOM", "CXR_TEACHER_PASSCODE", "CXR_MAX_JOBS"):
    os.environ.pop(_variable, None)

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

ARTIFACTS = ROOT / "test-artifacts"


@pytest.fixture(scope="session")
def app_data_root(tmp_path_factory) -> Path:
    """A data root with one small course-layout dataset ('mini') that has a leaky validation split."""
    from tests.app_support import make_course_dataset

    root = tmp_path_factory.mktemp("data")
    make_course_dataset(root / "mini")
    return root


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS
