"""The Home page's offer to generate the built-in demo dataset, for a server started without `make run`."""
from __future__ import annotations

import threading
import time

import streamlit as st

from cxrcore.demo import DemoConfig, ensure_demo_dataset, is_complete
from dashboard.loaders import clear_dataset_list
from dashboard.state import PENDING_DATASET_KEY, data_root
from dashboard.widgets import user_errors

DEMO_FOLDER = "demo"
#: The set `make run` makes (python -m cxrcore demo defaults), so either way gives the same files.
DEMO_CONFIG = DemoConfig()
#: One generation per server process; a second click (another student) waits, then finds it made.
_GENERATION_LOCK = threading.Lock()


def demo_missing() -> bool:
    """True when the data root holds no complete demo dataset."""
    return not is_complete(data_root() / DEMO_FOLDER)


def render_demo_offer(*, prominent: bool) -> None:
    """A button that generates data/demo with a progress bar, then switches the app to it."""
    if not demo_missing():
        return
    config = DEMO_CONFIG
    target = data_root() / DEMO_FOLDER
    if prominent:
        st.info(f"No dataset under {data_root()} yet. Generate the built-in teaching set to start: "
                f"{config.images:,} synthetic chest X-rays ({config.size} px) with known findings, boxes "
                "and patients, and a leaky validation split to find. It takes about a minute, once.",
                icon=":material/science:")
    clicked = st.button("Generate the demo dataset", type="primary" if prominent else "secondary",
                        icon=":material/science:", key="generate_demo",
                        help=f"Writes {target} (the same set `make run` makes).")
    if not clicked:
        return
    bar = st.progress(0.0, text="Waiting for another generation to finish..." if _GENERATION_LOCK.locked()
                      else f"Rendering 0 of {config.images:,} images...")
    start = time.perf_counter()

    def progress(done: int, total: int) -> None:
        bar.progress(done / max(total, 1), text=f"Rendering {done:,} of {total:,} images...")

    made = False
    with user_errors("generating the demo dataset"):
        with _GENERATION_LOCK:
            ensure_demo_dataset(target, config, progress=progress)
        made = True
    if made:
        bar.progress(1.0, text=f"Demo dataset ready in {time.perf_counter() - start:.0f} s.")
        clear_dataset_list()
        st.session_state[PENDING_DATASET_KEY] = DEMO_FOLDER
        st.rerun()  # the sidebar picks the new dataset up and every page shows it
