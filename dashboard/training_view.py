"""Training page sections: hardware, the one-click demo model, new-run settings with a time probe, and runs.

Jobs run as detached processes (`cxrcore.train.jobs.launch`): closing the page or restarting the app does
not stop them, and the page finds them again from runs/<id>/status.json. The live view is an
`st.fragment` that re-reads status.json, metrics.csv and train.log every POLL_S seconds while a run
is active; a run whose process is gone shows as interrupted at the next poll. On a shared server the
start, resume, cancel and probe controls are the teacher's (dashboard/teacher.py); students see the runs.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import time
from pathlib import Path
from typing import Any

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from cxrcore.data.pipeline import NORMALIZATION_MODES, Augmentation
from cxrcore.errors import ConfigError
from cxrcore.fileio import parse_json
from cxrcore.train import jobs, preflight
from cxrcore.train.registry import KIND_BACKBONE, KIND_MODEL
from cxrcore.train.trainconfig import (BACKBONE_LABELS, BACKBONES, CUSTOM, N_BLOCKS, N_LAYERS, PRESET_NOTES, PRESETS,
                                 TrainConfig, auto_preset, config_from_dict, detect_hardware)
from dashboard.charts import CLASS_COLORS
from dashboard.loaders import ActiveDataset
from dashboard.models import model_entries
from dashboard.state import APP_ROOT, models_root, runs_root
from dashboard.teacher import READ_ONLY_NOTE, can_control_jobs, require_job_control
from dashboard.widgets import fitted_columns, teaching_note, user_errors

#: Seconds between refreshes of the live run view.
POLL_S = 2.0
#: Initial weights files: Keras 2 HDF5 (a backbone such as the course's densenet.hdf5, or a full model).
WEIGHT_SUFFIXES = (".h5", ".hdf5")
#: JSON object of settings applied on top of the demo preset (e.g. a classroom admin's, or tests').
DEMO_OVERRIDES_ENV = "CXR_DEMO_OVERRIDES"
SELECTED_KEY = "train_selected_run"
PROBE_KEY = "train_probe"
NOTICE_KEY = "train_notice"
SKIP_MISSING_KEY = "train_skip_missing"
RUN_CHOICE_KEY = "train_run_choice"
#: The run this session just started or resumed: the run panel switches to it on its next draw.
FOLLOW_KEY = "train_follow_run"
KNOWN_RUNS_KEY = "train_known_runs"
STATE_ICONS = {"queued": ":material/schedule:", "running": ":material/play_circle:",
               "finished": ":material/check_circle:", "failed": ":material/error:",
               "cancelled": ":material/cancel:", "interrupted": ":material/warning:", "broken": ":material/broken_image:"}
_DEFAULTS = TrainConfig().to_dict()


@st.cache_data(ttl=60, show_spinner=False)
def hardware():
    """Cached hardware detection (runs nvidia-smi at most once a minute)."""
    return detect_hardware()


# ---------------------------------------------------------------------------------------------
# Hardware and the demo model


def render_hardware() -> None:
    """Say plainly whether a GPU is visible, and what that means for the presets."""
    hw = hardware()
    if hw.has_gpu:
        st.success(f"GPU: {hw.describe()} Mixed precision is used automatically.", icon=":material/memory:")
    else:
        st.warning(f"{hw.describe()} The CPU presets (demo, cpu-classroom) use smaller images and train fewer "
                   "layers; gpu-full would take hours per epoch here.", icon=":material/memory:")


def demo_overrides() -> dict[str, Any]:
    """Settings from CXR_DEMO_OVERRIDES (a JSON object), applied on top of the demo preset."""
    raw = os.environ.get(DEMO_OVERRIDES_ENV)
    if not raw:
        return {}
    try:
        data = parse_json(raw, error=ConfigError, file=None, what=DEMO_OVERRIDES_ENV)
    except ConfigError:
        raise ConfigError(f"{DEMO_OVERRIDES_ENV} is not valid JSON.", fix='set it to e.g. {"epochs": 2}.') from None
    if not isinstance(data, dict):
        raise ConfigError(f"{DEMO_OVERRIDES_ENV} must be a JSON object.", fix='set it to e.g. {"epochs": 2}.')
    return data


def demo_config(dataset: ActiveDataset) -> TrainConfig:
    """The demo preset on the given dataset folder (its default train/valid pair)."""
    if dataset.entry is None:
        raise ConfigError("the demo model needs a dataset folder with images on disk (e.g. data/demo), "
                          "not uploaded split files.", fix="choose a dataset folder in the sidebar.")
    return config_from_dict({"preset": "demo", "dataset": str(dataset.entry.root), "name": "demo",
                             **demo_overrides()})


def trained_runs() -> list[jobs.RunSummary]:
    """Runs that produced a best model."""
    return [r for r in jobs.list_runs(runs_root()) if not r.broken and r.has_model]


def start_run(config: TrainConfig) -> Path:
    """Create a run folder for `config` and launch it detached (teacher mode on a shared server; at most
    CXR_MAX_JOBS jobs on the machine); remember it as the selected run."""
    require_job_control("starting a training run")
    run_dir, pid = jobs.start_run(runs_root(), config, cwd=APP_ROOT)
    st.session_state[SELECTED_KEY] = st.session_state[FOLLOW_KEY] = run_dir.name
    st.session_state[NOTICE_KEY] = (f"Started run **{run_dir.name}** (process {pid}). It keeps running if you close "
                                    "this page or restart the app; follow it below.")
    return run_dir


def render_demo_offer(dataset: ActiveDataset | None, *, key: str = "train_demo") -> None:
    """One click: train the small demo model (what the Results and Explorer pages need on a fresh machine).

    Shown while no run has produced a model; while the demo runs it links to its progress instead.
    Other pages can call this too (with their own `key`).
    """
    runs = jobs.list_runs(runs_root())
    if any(r.has_model for r in runs if not r.broken):
        return
    active = [r for r in runs if r.state in jobs.ACTIVE_STATES]
    if active:
        st.info(f"A training run is in progress ({active[0].run_id}); its model appears here when the first "
                "epoch is done.", icon=":material/hourglass_top:")
        return
    with st.container(border=True):
        st.markdown("**No trained model yet.** The Results and GradCAM explorer pages need one. Train the small "
                    "demo model on this dataset: a small CNN at 128 px, 30 epochs, about 2 minutes on 2 "
                    "CPU cores, saved in runs/ like any other run.")
        if dataset is None or dataset.entry is None:
            st.caption("Choose a dataset folder (e.g. data/demo, made by `make run`) in the sidebar first.")
            return
        if not can_control_jobs():
            st.caption(READ_ONLY_NOTE)
            return
        if st.button("Train the demo model", key=key, type="primary", icon=":material/rocket_launch:"):
            with user_errors("starting the demo model"):
                start_run(demo_config(dataset))
                st.rerun()


# ---------------------------------------------------------------------------------------------
# New run


def _preset_defaults(preset: str) -> dict[str, Any]:
    values = dict(_DEFAULTS)
    values.update(PRESETS.get(preset, {}))
    aug = {**Augmentation().to_dict(), **(values.get("augmentation") or {})}
    values["augmentation"] = aug if values.get("augmentation") else None
    return values


def _settings_widgets(preset: str, entry_splits: list[str], pair: tuple[str, str] | None) -> dict[str, Any]:
    """Every editable setting; widget keys include the preset, so choosing a preset resets them to its values."""
    d = _preset_defaults(preset)
    k = f"train_{preset}_"
    out: dict[str, Any] = {}
    c1, c2, c3 = st.columns(3)
    train_default = entry_splits.index(pair[0]) if pair else 0
    valid_default = entry_splits.index(pair[1]) if pair else min(1, len(entry_splits) - 1)
    out["train_split"] = c1.selectbox("Training split", entry_splits, index=train_default, key=k + "train_split")
    out["valid_split"] = c2.selectbox("Validation split", entry_splits, index=valid_default, key=k + "valid_split",
                                      help="Chooses the best epoch (mean AUROC), lowers the learning rate and "
                                           "stops early. Keep the test split for the Results page.")
    out["name"] = c3.text_input("Run name (optional)", value="", key=k + "name", max_chars=80)
    c1, c2, c3, c4 = st.columns(4)
    out["backbone"] = c1.selectbox("Backbone", BACKBONES, index=BACKBONES.index(d["backbone"]), key=k + "backbone",
                                   format_func=BACKBONE_LABELS.get,
                                   help="ImageNet CNNs (DenseNet121 as in the course, ResNet50, EfficientNetV2-S), "
                                        "a vision transformer (ViT-B/16, 224 px, multiples of 16) or a small CNN "
                                        "trained from scratch.")
    out["input_size"] = int(c2.number_input("Image size (px)", 16, 1024, int(d["input_size"]), 16, key=k + "input_size"))
    out["batch_size"] = int(c3.number_input("Batch size (per device)", 1, 1024, int(d["batch_size"]), 1,
                                            key=k + "batch_size"))
    out["epochs"] = int(c4.number_input("Epochs", 1, 1000, int(d["epochs"]), 1, key=k + "epochs"))
    c1, c2, c3, c4 = st.columns(4)
    out["learning_rate"] = float(c1.number_input("Learning rate", 1e-7, 1.0, float(d["learning_rate"]), 1e-4,
                                                 format="%.1e", key=k + "learning_rate"))
    out["freeze"] = _freeze_widgets(c2, out["backbone"], d["freeze"], key=k + f"freeze_{out['backbone']}")
    out["normalization"] = c3.selectbox("Normalization", NORMALIZATION_MODES,
                                        index=NORMALIZATION_MODES.index(d["normalization"]), key=k + "normalization",
                                        help="sample: each image to mean 0, std 1 (the course). dataset: mean/std "
                                             "fitted on training images. imagenet: ImageNet channel statistics.")
    out["class_weighting"] = c4.toggle("Class-weighted loss", value=bool(d["class_weighting"]),
                                       key=k + "class_weighting",
                                       help="w_pos = frequency of negatives, w_neg = frequency of positives.")
    c1, c2 = st.columns([1, 3])
    vit = out["backbone"] == "vit_b16"
    weight_options = ["imagenet", "none", "a preset folder" if vit else "a file"]
    default_weights = d["initial_weights"] if d["initial_weights"] in ("imagenet", "none") else weight_options[2]
    choice = c1.selectbox("Initial weights", weight_options, index=weight_options.index(default_weights),
                          key=k + ("weights_vit" if vit else "weights"))  # other options: its own widget
    if choice == "a preset folder":
        out["initial_weights"] = _vit_preset_folder(c2, d["initial_weights"], key=k + "weights_preset")
    elif choice == "a file":
        out["initial_weights"] = _weights_file(c2, d["initial_weights"], key=k + "weights_file")
    else:
        out["initial_weights"] = choice
        if choice == "imagenet" and out["backbone"] != "small_cnn":
            found = weights_source(out["backbone"])
            if found.source != "unavailable":  # unavailable: the settings error below says it and the ways out
                c2.caption(found.note[0].upper() + found.note[1:])
    with st.expander("Augmentation", icon=":material/tune:"):
        aug = d["augmentation"] or Augmentation.none().to_dict()
        on = st.toggle("Augment training images", value=d["augmentation"] is not None, key=k + "aug_on")
        a1, a2, a3, a4, a5 = st.columns(5)
        values = {"rotation": a1.number_input("Rotation (deg)", 0.0, 45.0, float(aug["rotation"]), 1.0, key=k + "rot"),
                  "zoom": a2.number_input("Zoom", 0.0, 0.5, float(aug["zoom"]), 0.01, key=k + "zoom"),
                  "shift": a3.number_input("Shift", 0.0, 0.4, float(aug["shift"]), 0.01, key=k + "shift"),
                  "brightness": a4.number_input("Brightness", 0.0, 1.0, float(aug["brightness"]), 0.05,
                                                key=k + "brightness"),
                  "horizontal_flip": a5.toggle("Horizontal flip", value=bool(aug["horizontal_flip"]),
                                               key=k + "flip", help="Off by default: it moves the heart to the "
                                                                    "wrong side.")}
        out["augmentation"] = values if on else None
    with st.expander("Subset, stopping and seed", icon=":material/settings:"):
        a1, a2, a3, a4, a5 = st.columns(5)
        out["max_train_images"] = int(a1.number_input("Max training images (0 = all)", 0, 10**7,
                                                      int(d["max_train_images"] or 0), 100, key=k + "max_train")) or None
        out["max_valid_images"] = int(a2.number_input("Max validation images (0 = all)", 0, 10**7,
                                                      int(d["max_valid_images"] or 0), 100, key=k + "max_valid")) or None
        out["early_stopping_patience"] = int(a3.number_input("Early stopping patience (0 = off)", 0, 1000,
                                                             int(d["early_stopping_patience"]), 1, key=k + "es"))
        out["reduce_lr_patience"] = int(a4.number_input("Reduce LR patience (0 = off)", 0, 1000,
                                                        int(d["reduce_lr_patience"]), 1, key=k + "rlr"))
        out["seed"] = int(a5.number_input("Seed", 0, 2**31 - 1, int(d["seed"]), 1, key=k + "seed"))
        out["predict_test"] = st.toggle("Predict the test split at the end (for the Results page)",
                                        value=bool(d["predict_test"]), key=k + "predict_test")
        options, auto_why = backend_options()
        out["backend"] = st.selectbox("Keras backend", options, index=0, key=k + "backend",
                                      help="The library the job trains with; every backend saves the same .keras "
                                           f"model. auto: {auto_why}")
    return out


@st.cache_data(ttl=60, show_spinner=False)
def backend_options() -> tuple[list[str], str]:
    """("auto" and the Keras backends installed here, what "auto" takes here in words)."""
    from cxrcore.train.backend import choose_backend, installed

    try:
        why = choose_backend("auto", has_gpu=hardware().has_gpu).why
    except ConfigError as err:
        why = err.problem
    return ["auto"] + [name for name in ("tensorflow", "jax", "torch") if installed(name)], why


def render_new_run(dataset: ActiveDataset | None) -> None:
    """Pick preset and settings, estimate the time per epoch, start the job."""
    st.subheader("New training run")
    if dataset is None:
        st.info("No dataset yet: see the Home page.")
        return
    if dataset.entry is None or dataset.image_root is None:
        st.info("Training needs a dataset folder with its images on disk (under the data folder); uploaded split "
                "files have no images. Choose a dataset folder in the sidebar.")
        return
    entry = dataset.entry
    hw = hardware()
    auto, why = auto_preset(hw, models_root())
    options = [*PRESETS, CUSTOM]
    preset = st.selectbox("Preset", options, index=options.index(auto), key="train_preset",
                          format_func=lambda p: p + (" (suggested for this machine)" if p == auto else ""),
                          help="A preset fills in every setting below; change any of them.")
    st.caption(PRESET_NOTES.get(preset, "Your own settings, starting from the defaults.")
               + (f" {why}" if preset == auto else ""))
    settings = _settings_widgets(preset, entry.split_names, entry.default_pair())
    settings["skip_missing_images"] = bool(st.session_state.get(SKIP_MISSING_KEY, False))
    config = None
    try:
        config = config_from_dict({"preset": preset, "dataset": str(entry.root), **settings}, base_dir=APP_ROOT)
    except ConfigError as err:
        st.error(settings_error_text(err), icon=":material/error:")
    checks = None
    if config is not None:
        with user_errors("checking the data before the run"):
            checks = render_preflight(config)
    teaching_note("training choices",
                  "- **Class-weighted loss**: rare findings would otherwise be ignored; each class's positives and "
                  "negatives contribute equally.\n- **Trainable layers**: with ImageNet weights, training only the "
                  "head is fast and needs little data; unfreezing the last blocks adapts the features to X-rays.\n"
                  "- The **validation split** picks the best epoch (mean AUROC), lowers the learning rate when it "
                  "stalls, and stops early. Never use the test split for this, or its AUROC is optimistic.")
    allowed = can_control_jobs()  # the probe, too, takes the machine's CPU for a while
    c1, c2, _ = st.columns([1, 1, 2])
    probe_clicked = c1.button("Estimate time per epoch", key="train_probe_button",
                              disabled=config is None or not allowed, icon=":material/timer:",
                              help="Times a few real training batches on this machine.")
    blocked = config is None or checks is None or checks.blocking
    start_clicked = c2.button("Start training", key="train_start", type="primary",
                              disabled=blocked or not allowed, icon=":material/play_arrow:",
                              help="Fix what the red box above says first." if blocked else None)
    if not allowed:
        st.caption(READ_ONLY_NOTE)
    if config is None:
        return
    fingerprint = hashlib.sha1(config.to_json().encode()).hexdigest()
    if probe_clicked:
        with user_errors("estimating the time per epoch"), \
                st.spinner("Timing a few batches (starts TensorFlow in a separate process)..."):
            require_job_control("estimating the time per epoch")
            st.session_state[PROBE_KEY] = (fingerprint, jobs.run_probe(config, cwd=APP_ROOT))
    probe = st.session_state.get(PROBE_KEY)
    if probe and probe[0] == fingerprint:
        render_probe(probe[1])
    if start_clicked and not blocked:
        with user_errors("starting the run"):
            start_run(config)
            st.rerun()


#: The form's name for each setting, so an error names the field the user sees.
SETTING_LABELS = {"train_split": "Training split", "valid_split": "Validation split", "name": "Run name",
                  "backbone": "Backbone", "input_size": "Image size (px)", "batch_size": "Batch size",
                  "epochs": "Epochs", "learning_rate": "Learning rate", "freeze": "Trainable layers",
                  "normalization": "Normalization", "class_weighting": "Class-weighted loss",
                  "initial_weights": "Initial weights", "augmentation": "Augmentation", "seed": "Seed",
                  "max_train_images": "Max training images", "max_valid_images": "Max validation images",
                  "early_stopping_patience": "Early stopping patience", "reduce_lr_patience": "Reduce LR patience",
                  "dataset": "Dataset", "image_root": "Image folder", "test_split": "Test split",
                  "backend": "Keras backend"}


def _sentence(text: str) -> str:
    text = text.strip()
    return text[:1].upper() + text[1:] if text else text


def settings_error_text(err: ConfigError) -> str:
    """A settings error as sentences naming the form's field: "Image size (px) must be between ...", then
    the way out; errors not about one setting as they are."""
    key = getattr(err, "setting", None)
    if key is None:
        return _sentence(str(err))
    label = SETTING_LABELS.get(key, key)
    detail = str(getattr(err, "detail", err.problem))
    head = f"**{label}** {detail}" if detail.startswith(("must ", "is ")) else f"**{label}**: {_sentence(detail)}"
    return head + (f" To fix it: {err.fix}" if err.fix else "")


@st.cache_data(ttl=60, show_spinner=False, max_entries=32)
def _preflight(config_json: str, folder_stamp: float, _config: TrainConfig) -> "preflight.Preflight":
    """The checks before launch, once per config (its JSON) and image-folder version (its modification time)."""
    return preflight.check_run(_config)


def render_preflight(config: TrainConfig) -> "preflight.Preflight":
    """What would make this run fail or mislead, in the form: missing images (with the switch to train on
    the images present), patients shared by the training and validation splits."""
    try:
        stamp = Path(config.image_root or "").stat().st_mtime
    except OSError:
        stamp = 0.0
    checks = _preflight(config.to_json(), stamp, config)
    for finding in checks.findings:
        if finding.level == "error":
            st.error(finding.text, icon=":material/error:")
        else:
            st.warning(finding.text, icon=":material/warning:")
    if checks.missing_total or st.session_state.get(SKIP_MISSING_KEY):
        st.toggle(f"Train on the images present (leave out the {checks.missing_total:,} missing)",
                  key=SKIP_MISSING_KEY, help="Rows whose image file is missing are left out of training, "
                  "validation and test; the run records how many (skip_missing_images in config.json).")
    return checks


def render_probe(result: dict[str, Any]) -> None:
    """The probe's estimate in one sentence and three numbers."""
    st.info(f"About **{_duration(result['seconds_per_epoch'])} per epoch** on {result['device']} "
            f"({result['batches_per_epoch']} batches of {result['batch_size']} at {result['seconds_per_batch']:.3g} s, "
            f"plus {result['valid_batches']} validation batches). The first epoch also decodes the images: about "
            f"{_duration(result['first_epoch_seconds'])}. All {result['epochs']} epochs: about "
            f"**{_duration(result['total_seconds'])}**.", icon=":material/timer:")


def _duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "?"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


# ---------------------------------------------------------------------------------------------
# Runs


def render_runs() -> None:
    """Past and running jobs; refreshes itself while one is active."""
    st.subheader("Runs")
    notice = st.session_state.pop(NOTICE_KEY, None)
    if notice:
        st.success(notice, icon=":material/rocket_launch:")
    runs = jobs.list_runs(runs_root())
    if not runs:
        st.caption(f"No runs yet under {runs_root()}.")
        return
    active = any(r.state in jobs.ACTIVE_STATES for r in runs)
    st.fragment(run_every=POLL_S if active else None)(_runs_fragment)()


def _runs_fragment() -> None:
    runs = jobs.list_runs(runs_root())
    active = any(r.state in jobs.ACTIVE_STATES for r in runs)
    if not active and st.session_state.get("_train_was_active"):
        # The last active run ended: redraw the whole page (the fragment stops polling) BEFORE drawing its
        # Resume button here: a click on a button of this fragment run would be dropped by that rerun.
        st.session_state["_train_was_active"] = False
        st.rerun(scope="app")
    st.session_state["_train_was_active"] = active
    table = pd.DataFrame([r.row() for r in runs])
    st.dataframe(table, hide_index=True, width="stretch", column_config=fitted_columns(table, {
        "best val AUROC": st.column_config.NumberColumn(format="%.4f"),
        "note": st.column_config.TextColumn(width="large", help="The whole text is under the table when the run "
                                                                "is chosen.")}))
    ids = [r.run_id for r in runs]
    follow = _run_to_follow(runs)
    if follow is not None:  # a keyed selectbox keeps its own value over `index`: move the value itself
        st.session_state[RUN_CHOICE_KEY] = follow
    wanted = st.session_state.get(SELECTED_KEY)
    index = ids.index(wanted) if wanted in ids else 0
    # Options are the bare ids: a keyed selectbox keeps showing the label it had when chosen, so a state
    # in the label ("(running)") would go stale when the run finishes or dies. The state is shown below.
    chosen = st.selectbox("Run", ids, index=index, key=RUN_CHOICE_KEY)
    st.session_state[SELECTED_KEY] = chosen
    run = next(r for r in runs if r.run_id == chosen)
    with user_errors(f"run {chosen}"):
        render_run(run)


def _run_to_follow(runs: list[jobs.RunSummary]) -> str | None:
    """The run the panel should switch to: the one this session just started or resumed, else a run that
    became active since this session's last look (started by the teacher, the CLI or another tab)."""
    ids = [r.run_id for r in runs]
    known = st.session_state.get(KNOWN_RUNS_KEY)
    st.session_state[KNOWN_RUNS_KEY] = set(ids)
    wanted = st.session_state.pop(FOLLOW_KEY, None)
    if wanted in ids:
        return wanted
    if known is None:
        return None
    fresh = [r.run_id for r in runs if r.run_id not in known and r.state in jobs.ACTIVE_STATES]
    return fresh[0] if fresh else None


def render_run(run: jobs.RunSummary) -> None:
    """One run: state, progress, curves, log, and cancel / resume."""
    if run.broken:
        st.error(f"This run folder is broken: {run.problem} It is left as it is; other runs are unaffected.",
                 icon=":material/broken_image:")
        return
    s = run.status
    state = run.state
    epochs = int(s.get("epochs") or run.config.get("epochs") or 1)
    done = int(s.get("epochs_done") or 0)
    steps = int(s.get("steps") or 0)
    step = int(s.get("step") or 0)
    header = f"{STATE_ICONS.get(state, '')} **{state}**"
    if state in jobs.ACTIVE_STATES:
        header += f" · {s.get('phase') or 'starting'}"
        age = time.time() - float(s.get("updated") or time.time())
        header += f" · heartbeat {age:.0f} s ago"
    st.markdown(header)
    if state == "interrupted":
        st.warning("The training process is gone without finishing (killed, crashed or the machine restarted). "
                   "Resume continues from the last completed epoch.", icon=":material/warning:")
    if s.get("error"):
        st.error(f"**Why it failed:** {s['error']}", icon=":material/error:")
    elif state == "failed" and (last := jobs.log_tail(run.path, lines=8, name=jobs.RAW_LOG_FILE)):
        st.error("The process ended without giving a reason of its own; the last lines it printed (raw.log):",
                 icon=":material/error:")
        st.code(last, language=None)
    elif state == "interrupted" and (last := jobs.log_tail(run.path, lines=8, name=jobs.RAW_LOG_FILE)):
        with st.expander("The last lines the process printed (raw.log): a crash says why here"):
            st.code(last, language=None)
    elif s.get("message"):
        st.caption(s["message"])
    fraction = min(1.0, (done + (step / steps if steps and state in jobs.ACTIVE_STATES else 0)) / max(epochs, 1))
    eta = s.get("eta_seconds") if state in jobs.ACTIVE_STATES else None
    st.progress(fraction, text=f"epoch {min(done + (1 if state in jobs.ACTIVE_STATES else 0), epochs)}/{epochs}"
                + (f", step {step}/{steps}" if state in jobs.ACTIVE_STATES and steps else "")
                + (f" · about {_duration(eta)} left" if eta else ""))
    best = s.get("best_val_auroc")
    cols = st.columns(4)
    cols[0].metric("Best val mean AUROC", f"{best:.4f}" if isinstance(best, (int, float)) else "-",
                   help=f"epoch {s.get('best_epoch')}" if s.get("best_epoch") else None)
    cols[1].metric("Epochs done", f"{done}/{epochs}")
    cols[2].metric("Device", str(s.get("device") or "-"))
    cols[3].metric("Preset", str(run.config.get("preset") or "-"))
    _render_actions(run)
    try:
        metrics = jobs.read_metrics(run.path)
    except ConfigError as err:  # a damaged metrics.csv loses the curves, not the rest of the run's view
        st.warning(f"The curves cannot be drawn: {err}", icon=":material/show_chart:")
        metrics = pd.DataFrame()
    if len(metrics):
        render_curves(metrics, key=run.run_id)
    if (run.path / jobs.PREDICTIONS_DIR / "test.csv").is_file():
        st.page_link("pages/results.py", label="Evaluate this run's test predictions on the Results page",
                     icon=":material/monitoring:")
    tail = jobs.log_tail(run.path, lines=30)
    with st.expander("Log (last lines of train.log)", expanded=state in jobs.ACTIVE_STATES or state == "failed"):
        st.code(tail or "(no log yet)", language=None)
        if (run.path / jobs.RAW_LOG_FILE).is_file():
            st.caption(f"These are the job's own lines. Everything the process printed, TensorFlow's start-up "
                       f"notices included (such as a failed cuInit on a machine without a GPU: harmless), is in "
                       f"{run.path / jobs.RAW_LOG_FILE}.")
    with st.expander("Configuration and data"):
        st.json(run.config, expanded=False)
        info_path = run.path / jobs.RUN_FILE
        if info_path.is_file():
            info = jobs.read_json(info_path)
            weights = info.get("class_weights") or {}
            if weights:
                st.dataframe(pd.DataFrame([{"class": k, **v} for k, v in weights.items()]), hide_index=True)
            st.caption("Data fingerprints (SHA-256 of the split files): "
                       + ", ".join(f"{role} {v.get('sha256', '')[:12]}" for role, v in (info.get("data") or {}).items()))
        st.caption(f"Folder: {run.path}")


def _render_actions(run: jobs.RunSummary) -> None:
    """Cancel / force stop while a run is active, resume after it stopped: for the teacher on a shared server."""
    key = run.run_id
    s = run.status
    if run.state not in (*jobs.ACTIVE_STATES, "interrupted", "cancelled", "failed"):
        return
    if not can_control_jobs():
        st.caption(READ_ONLY_NOTE)
        return
    c1, c2, _ = st.columns([1, 1, 3])
    if run.state in jobs.ACTIVE_STATES:
        requested = s.get("cancel_requested")
        if c1.button("Cancel", key=f"train_cancel_{key}", icon=":material/stop_circle:",
                     help="Stops after the current batch; the process saves a checkpoint, so you can resume."):
            with user_errors("cancelling"):
                require_job_control("cancelling a training run")
                if jobs.cancel(run.path):
                    st.toast("Cancel sent: the job saves what it has and stops.")
                else:
                    st.toast("The process is already gone.")
        if requested and time.time() - float(requested) > 15:
            if c2.button("Force stop", key=f"train_kill_{key}", icon=":material/dangerous:",
                         help="SIGKILL: stops at once without saving (resume restarts the unfinished epoch)."):
                with user_errors("stopping"):
                    require_job_control("stopping a training run")
                    jobs.cancel(run.path, force=True)
    elif run.state in ("interrupted", "cancelled", "failed"):
        if c1.button("Resume", key=f"train_resume_{key}", icon=":material/play_arrow:",
                     help="Continue from the last checkpoint, in the same run folder."):
            with user_errors("resuming"):
                require_job_control("resuming a training run")
                pid = jobs.launch(run.path, resume=True, cwd=APP_ROOT)
                st.session_state[NOTICE_KEY] = f"Resumed run **{run.run_id}** (process {pid})."
                st.session_state[FOLLOW_KEY] = run.run_id
                st.rerun(scope="app")


def _freeze_widgets(column: Any, backbone: str, default: str, *, key: str) -> str:
    """Which layers train: head only, head + the last N blocks, all but the first N layers, or everything."""
    blocks, layers = N_BLOCKS[backbone], N_LAYERS[backbone]
    options = ["head", *[f"last:{n}" for n in range(1, blocks + 1)], "first", "none"]
    labels = {"head": "head only (backbone frozen)", "none": "nothing frozen (train all layers)",
              "first": "all but the first N layers",
              **{f"last:{n}": f"head + last {n} block{'s' if n > 1 else ''}" for n in range(1, blocks + 1)}}
    mode = "first" if default.startswith("first:") else default
    choice = column.selectbox("Trainable layers", options, format_func=labels.get,
                              index=options.index(mode) if mode in options else 0, key=key,
                              help="The course's references froze the first 50 layers of DenseNet121.")
    if choice != "first":
        return choice
    start = int(default.split(":", 1)[1]) if default.startswith("first:") else min(50, layers)
    n = column.number_input(f"Frozen first layers (of {layers})", 1, layers, min(start, layers), 1, key=key + "_n",
                            help="Counted in order from the input layer, as `base_model.layers[:N]` does.")
    return f"first:{int(n)}"


def weights_source(backbone: str):
    """Where the backbone's ImageNet weights would come from now (cache, course file, preset, download)."""
    from cxrcore.train.model import find_imagenet_weights

    return find_imagenet_weights(models_root(), backbone=backbone)


def _vit_preset_folder(column: Any, current: str, *, key: str) -> str:
    """A keras-hub ViT-B/16 preset folder (config.json + model.weights.h5) picked from those under models/."""
    from cxrcore.train.model import VIT_PRESET_DIR, vit_preset_problem

    root = models_root()
    folders = sorted(str(p.parent) for p in Path(root).rglob("config.json") if vit_preset_problem(p.parent) is None) \
        if Path(root).is_dir() else []
    if not folders:
        column.info(f"No ViT-B/16 preset folder under {root}: copy keras-hub's preset (config.json, "
                    f"model.weights.h5) to {Path(root) / VIT_PRESET_DIR}.")
        return "(no preset folder under models/)"
    index = folders.index(current) if current in folders else 0
    return column.selectbox("ViT-B/16 preset folder under models/", folders, index=index, key=key,
                            format_func=lambda f: str(Path(f).relative_to(root)))


def _weights_file(column: Any, current: str, *, key: str) -> str:
    """A .h5 weights file picked from those under models/ (a backbone such as the course's densenet.hdf5,
    or a full model): only files inside the models folder can be chosen, none typed."""
    files = [str(e.path) for e in model_entries()
             if e.kind in (KIND_BACKBONE, KIND_MODEL) and e.path.suffix.lower() in WEIGHT_SUFFIXES
             and e.run_dir is None]
    if not files:
        column.info(f"No .h5 weights file under {models_root()}: put one there (for example the course's "
                    "models/nih/densenet.hdf5).")
        return "(no file under models/)"
    root = models_root()
    index = files.index(current) if current in files else 0
    return column.selectbox("Weights file (.h5) under models/", files, index=index, key=key,
                            format_func=lambda f: str(Path(f).relative_to(root)))


def _epoch_axis(epochs: pd.Series) -> dict[str, Any]:
    """Whole-number epoch ticks (at most about ten of them), never 1.2, 1.4, ..."""
    return dict(title="epoch", tickmode="linear", tick0=1, dtick=max(1, math.ceil(len(epochs) / 10)))


def render_curves(metrics: pd.DataFrame, *, key: str) -> None:
    """Loss and validation loss; mean and per-class validation AUROC, by epoch."""
    c1, c2 = st.columns(2)
    loss = go.Figure()
    for column, name, dash in (("loss", "training loss", "solid"), ("val_loss", "validation loss", "dash")):
        if column in metrics:
            loss.add_scatter(x=metrics["epoch"], y=metrics[column], name=name, mode="lines+markers",
                             line=dict(dash=dash, color="#1f6feb"))
    loss.update_layout(title="Weighted loss", xaxis=_epoch_axis(metrics["epoch"]), height=340,
                       template="plotly_white", margin=dict(l=10, r=10, t=40, b=10),
                       legend=dict(orientation="h", y=-0.3, yanchor="top"))
    c1.plotly_chart(loss, width="stretch", key=f"train_loss_{key}")
    per_class = [c for c in metrics.columns if c.startswith("val_auroc_") and c != "val_auroc_mean"]
    labels = [c[len("val_auroc_"):] for c in per_class]
    shown = c2.multiselect("Classes", labels, default=[], key=f"train_classes_{key}",
                           placeholder="Add per-class curves")
    auroc = go.Figure()
    if "val_auroc_mean" in metrics:
        auroc.add_scatter(x=metrics["epoch"], y=metrics["val_auroc_mean"], name="mean", mode="lines+markers",
                          line=dict(color="#222222", width=3))
    for label in shown:
        auroc.add_scatter(x=metrics["epoch"], y=metrics[f"val_auroc_{label}"], name=label, mode="lines",
                          line=dict(color=CLASS_COLORS.get(label, "#888888")))
    auroc.add_hline(y=0.5, line_dash="dot", line_color="#9a9a9a")
    auroc.update_layout(title="Validation AUROC", xaxis=_epoch_axis(metrics["epoch"]), yaxis_range=[0, 1],
                        height=340, template="plotly_white", margin=dict(l=10, r=10, t=40, b=10),
                        legend=dict(orientation="h", y=-0.3, yanchor="top"))
    c2.plotly_chart(auroc, width="stretch", key=f"train_auroc_{key}")
    teaching_note("reading the curves",
                  "Training loss falling while validation loss rises is overfitting; the best model is the epoch "
                  "with the highest mean validation AUROC (saved as best.keras). Per-class AUROC of rare classes "
                  "jumps around on a small validation split: a few images decide it.")


__all__ = ["demo_config", "demo_overrides", "render_demo_offer", "render_hardware", "render_new_run", "render_run",
           "render_runs", "start_run", "trained_runs"]
