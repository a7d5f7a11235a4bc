"""Where things live on disk and what the user has chosen, kept in st.session_state."""
from __future__ import annotations

import os
from pathlib import Path

import streamlit as st

APP_ROOT = Path(__file__).resolve().parent.parent

DATASET_KEY = "active_dataset"
#: Set by a page to switch the sidebar's dataset on the next run (a widget's key cannot be set after it is drawn).
PENDING_DATASET_KEY = "pending_dataset"
MODELS_KEY = "active_models"
TEACHING_KEY = "teaching_mode"


def _root(variable: str, default: str) -> Path:
    return Path(os.environ.get(variable) or (APP_ROOT / default)).resolve()


def data_root() -> Path:
    """Datasets live in one folder each below this (data/nih, data/demo); CXR_DATA_ROOT overrides."""
    return _root("CXR_DATA_ROOT", "data")


def models_root() -> Path:
    return _root("CXR_MODELS_ROOT", "models")


def runs_root() -> Path:
    return _root("CXR_RUNS_ROOT", "runs")


def cache_root() -> Path:
    """Predictions and decoded-image caches; safe to delete."""
    return _root("CXR_CACHE_ROOT", "cache")


def teaching_mode() -> bool:
    """True when the teaching toggle is on: every page shows its explanations."""
    return bool(st.session_state.get(TEACHING_KEY, False))
