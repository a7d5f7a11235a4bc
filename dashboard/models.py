"""Models for the pages: discovery (cached briefly), loading (one copy per process), predictions."""
from __future__ import annotations

import sys
from pathlib import Path

import streamlit as st
from streamlit.logger import get_logger

from cxrcore.data.dataset import Split
from cxrcore.data.predictions import Predictions, read_predictions
from cxrcore.train.model import LoadedModel
from cxrcore.train.registry import ModelEntry, discover_models
from dashboard.loaders import ActiveDataset
from dashboard.state import MODELS_KEY, cache_root, models_root, runs_root

#: Streamlit's logger, so the line shows in the server log at its default level (bench_classroom.py counts it).
log = get_logger("cxr_dashboard.models")
MODEL_LOADED = "loaded model"


def model_entries() -> list[ModelEntry]:
    """Every model file under models/ and every run's best model (re-scanned every 10 s)."""
    return _entries(str(models_root()), str(runs_root()))


@st.cache_data(show_spinner=False, ttl=10)
def _entries(models: str, runs: str) -> list[ModelEntry]:
    return discover_models(models, runs)


def usable_models() -> list[ModelEntry]:
    return [e for e in model_entries() if e.usable]


def active_models() -> list[ModelEntry]:
    """The models chosen in the sidebar (all usable ones when none was chosen yet)."""
    usable = {e.name: e for e in usable_models()}
    chosen = [usable[n] for n in st.session_state.get(MODELS_KEY, []) if n in usable]
    return chosen or list(usable.values())[:1]


def keep_compiled_functions() -> None:
    """Stop Streamlit's per-run `keras.backend.clear_session()` from dropping TensorFlow's kernel cache.

    After every script run Streamlit calls keras.backend.clear_session(), which clears TensorFlow's
    kernel cache: every cached model then re-instantiates and re-optimizes its graph on the next
    run (~1 s for DenseNet121 on 2 cores, on every click). Models here live in st.cache_resource for
    the whole process, so there is nothing to clear: that one call (and only it) becomes a no-op.
    Process-wide and idempotent; every page that predicts benefits. CXR_KEEP_TF_KERNELS=0 turns it off.
    """
    import os

    if os.environ.get("CXR_KEEP_TF_KERNELS", "1") == "0":
        return
    try:
        import keras
    except ImportError:  # pragma: no cover - keras is a pinned dependency
        return
    original = keras.backend.clear_session
    if getattr(original, "_cxr_keeps_kernels", False):
        return

    def clear_session(*args, **kwargs):
        if not args and not kwargs and sys._getframe(1).f_code.co_name == "_clean_problem_modules":
            return None  # Streamlit's after-run cleanup
        return original(*args, **kwargs)

    clear_session._cxr_keeps_kernels = True  # type: ignore[attr-defined]
    keras.backend.clear_session = clear_session


# --------------------------------------------------------------------------------------------
# Cached computations
# --------------------------------------------------------------------------------------------


@st.cache_resource(show_spinner="Loading the model...", max_entries=4)
def loaded_model(path: str, fingerprint: str) -> LoadedModel:
    """One loaded copy per model file per server process, shared by every session."""
    from cxrcore.train.model import load_model
    from cxrcore.train.registry import describe_model

    keep_compiled_functions()
    model = load_model(path, describe_model(Path(path), Path(path).stem).info)
    log.info("%s %s (%s)", MODEL_LOADED, path, fingerprint)
    freeze_long_lived_heap()
    return model


def freeze_long_lived_heap() -> None:
    """Move every object alive now (TensorFlow, Keras, the loaded model) out of the garbage collector's view.

    They live as long as the process; without this each full collection walks them all (about 0.15 s
    of CPU with TensorFlow imported, holding the GIL). Collected first, so only live objects are frozen;
    later garbage is collected as usual. Called after each model load (a few per process)."""
    import gc

    gc.collect()
    gc.freeze()


@st.cache_resource(show_spinner="Fitting the model's normalization on training images...", max_entries=8)
def _fitted(path: str, fingerprint: str, _train: Split, train_key: str, image_root: str) -> LoadedModel:
    from cxrcore.train.inference import fit_normalization

    return fit_normalization(loaded_model(path, fingerprint), _train, image_root)


def ready_model(entry: ModelEntry, dataset: ActiveDataset | None) -> LoadedModel:
    """The loaded model, with `dataset` normalization fitted on the active dataset's training split
    when the file does not store it (the course's .h5 files)."""
    model = loaded_model(str(entry.path), entry.fingerprint)
    if model.info.normalization.fitted:
        return model
    from cxrcore.data.catalog import split_role
    from cxrcore.errors import ModelError

    train = next((s for n, s in (dataset.splits.items() if dataset else []) if split_role(n) == "train"), None)
    if train is None or dataset.image_root is None:
        raise ModelError("this model needs 'dataset' normalization fitted on training images, and the active "
                         "dataset has no training split with images.", file=str(entry.path),
                         fix="choose a dataset with a train split and an image folder.")
    return _fitted(str(entry.path), entry.fingerprint, train, train.source, str(dataset.image_root))


def predictions_for(entry: ModelEntry, split: Split, dataset: ActiveDataset) -> Predictions:
    """The model's predictions on the images of a split that are on disk (missing files are left out: the
    pages say which), computed once (progress bar) and cached."""
    from cxrcore.errors import DatasetError
    from cxrcore.train.inference import cached_predictions
    from dashboard.loaders import present_images

    model = ready_model(entry, dataset)
    present, missing = present_images(split, dataset.image_root)
    if not len(present):
        raise DatasetError(f"none of the {len(split):,} images of {split.name} is in the image folder.",
                           file=str(dataset.image_root), fix="copy the images there, or use prediction files.")
    bar = st.progress(0.0, text=f"Predicting {len(present):,} images with {entry.name}...")
    try:
        path = cached_predictions(cache_root() / "predictions", entry.fingerprint, model, present, dataset.image_root,
                                  progress=lambda done, total, _: bar.progress(done / total,
                                                                               text=f"{entry.name}: {done}/{total}"))
    finally:
        bar.empty()  # also when prediction fails: no progress bar left standing over the error
    return _read_cached(str(path), path.stat().st_mtime_ns)


@st.cache_data(show_spinner=False, max_entries=64)
def _read_cached(path: str, mtime: int) -> Predictions:
    return read_predictions(path)


def model_sources(split: Split, dataset: ActiveDataset) -> tuple[dict[str, Predictions], dict[str, dict]]:
    """Predictions of the sidebar's active models on a split (its images on disk: a warning names the
    missing ones), and what each was trained on (for the leakage warning). Models that fail show an
    error and are left out; the others still evaluate."""
    from cxrcore.data.catalog import kind_mismatch
    from dashboard.loaders import missing_note, present_images
    from dashboard.widgets import user_errors

    sources: dict[str, Predictions] = {}
    training: dict[str, dict] = {}
    models = active_models()
    if not models:
        return sources, training
    if dataset.image_root is None:
        st.info("The active dataset has no image folder, so its models cannot predict it here; "
                "use prediction files instead.")
        return sources, training
    present, missing = present_images(split, dataset.image_root)
    if missing and len(present):
        st.warning(missing_note(split, missing, f"The models predict the {len(present):,} present images and "
                                                "are evaluated on those."), icon=":material/image_not_supported:")
    kind = dataset.entry.kind if dataset.entry is not None else ""
    for entry in models:
        warning = kind_mismatch(entry.info.data_kind, kind, entry.info.dataset)
        if warning:
            st.warning(f"{entry.name}: {warning}", icon=":material/warning:")
        with user_errors(f"model '{entry.name}'"):
            sources[entry.name] = predictions_for(entry, split, dataset)
            if entry.train_split:
                training[entry.name] = {"train_split": entry.train_split}
    return sources, training
