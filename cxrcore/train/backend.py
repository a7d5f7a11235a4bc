"""A job's Keras backend: "auto" | "tensorflow" | "jax" | "torch", chosen and applied before Keras is imported.

Keras 3 runs one model on TensorFlow, JAX or PyTorch and saves the same .keras file from each, so a
job may train on whichever backend its machine has (a GPU machine often has JAX or PyTorch and no
TensorFlow). "auto" takes the backend that sees a GPU (JAX, then PyTorch, then TensorFlow) and
TensorFlow on a machine without one. Nothing here imports a framework unless it must: finding a GPU
uses nvidia-smi, and JAX's CUDA support is recognised by its plugin package.
"""
from __future__ import annotations

import importlib.util
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from cxrcore.errors import ConfigError
from cxrcore.train.trainconfig import BACKENDS

#: What to install for each backend, said in the error when it is missing.
INSTALL = {"tensorflow": "pip install tensorflow (CPU and CUDA in one package)",
           "jax": "pip install jax (CPU), or `make gpu` for JAX with CUDA",
           "torch": "pip install torch (see pytorch.org for the CUDA build of your machine)"}
#: Packages through which JAX sees NVIDIA GPUs (jax[cuda12] / jax[cuda13] install one of them).
JAX_CUDA_PLUGINS = ("jax_cuda13_plugin", "jax_cuda12_plugin", "jax_plugins.xla_cuda13", "jax_plugins.xla_cuda12")
#: Where JAX keeps compiled steps between jobs (under the cache root): a second job skips the compilation.
JAX_CACHE_DIR = "jax"


def installed(backend: str) -> bool:
    """Whether the backend's package can be imported here (found on the path; nothing imported)."""
    return importlib.util.find_spec(backend) is not None


def backend_problem(backend: str) -> str | None:
    """Why `backend` cannot run here (not installed), or None."""
    if backend == "auto" or installed(backend):
        return None
    return f"the {backend} backend is not installed in this Python ({sys.executable}); {INSTALL[backend]}."


def _found(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def jax_has_cuda() -> bool:
    """JAX is installed with its CUDA plugin (jax[cuda12] or jax[cuda13])."""
    return installed("jax") and any(_found(m) for m in JAX_CUDA_PLUGINS)


def torch_has_cuda() -> bool:
    """PyTorch is installed and sees a CUDA GPU (imports torch: only asked when JAX cannot take the GPU)."""
    if not installed("torch"):
        return False
    try:
        import torch
    except Exception:  # noqa: BLE001 - a broken torch install is "no torch" here
        return False
    return bool(torch.cuda.is_available())


@dataclass(frozen=True)
class BackendChoice:
    """The backend a job runs on and why, in words for the log and run.json."""

    name: str
    setting: str
    why: str


def choose_backend(setting: str, *, has_gpu: bool | None = None) -> BackendChoice:
    """The backend for a job's `backend` setting; an explicit one that is not installed is a ConfigError."""
    if setting not in BACKENDS:
        raise ConfigError(f"setting 'backend': {setting!r} is not one of {', '.join(BACKENDS)}.",
                          fix='write backend = "auto" (or tensorflow, jax, torch).')
    if setting != "auto":
        problem = backend_problem(setting)
        if problem:
            raise ConfigError(f"setting 'backend': {problem}", fix=f"{INSTALL[setting]}; or set backend = \"auto\".")
        return BackendChoice(setting, setting, f"backend = {setting} in the settings.")
    if has_gpu is None:
        from cxrcore.train.trainconfig import detect_hardware

        has_gpu = detect_hardware().has_gpu
    if has_gpu:
        if jax_has_cuda():
            return BackendChoice("jax", setting, "a GPU is visible and JAX has CUDA: JAX.")
        if torch_has_cuda():
            return BackendChoice("torch", setting, "a GPU is visible to PyTorch (JAX has no CUDA here): PyTorch.")
        if installed("tensorflow"):
            return BackendChoice("tensorflow", setting, "a GPU is visible; neither JAX nor PyTorch has CUDA here: "
                                 "TensorFlow.")
    elif installed("tensorflow"):
        return BackendChoice("tensorflow", setting, "no GPU visible: TensorFlow, as on every CPU machine.")
    for name in ("jax", "torch"):
        if installed(name):
            return BackendChoice(name, setting, f"TensorFlow is not installed: {name}.")
    raise ConfigError("no Keras backend is installed (TensorFlow, JAX or PyTorch).",
                      fix="pip install -r requirements.txt (TensorFlow and JAX), or `make gpu`.")


def activate(backend: str) -> None:
    """Make Keras use `backend` in this process: KERAS_BACKEND, set before Keras is first imported.

    Keras reads the variable once, on import; a process that imported Keras with another backend
    cannot switch (a ConfigError says so: train in a new process, as `python -m cxrcore train` does).
    """
    os.environ["KERAS_BACKEND"] = backend
    if "keras" in sys.modules:
        import keras

        current = keras.backend.backend()
        if current != backend:
            raise ConfigError(f"this process already runs Keras on {current}, not {backend}.",
                              fix="start the job in its own process (python -m cxrcore train), which sets "
                                  "KERAS_BACKEND before Keras starts.")


def enable_compilation_cache(cache_root: str | os.PathLike) -> Path | None:
    """JAX's persistent compilation cache under cache_root: a second job with the same model skips compiling."""
    if os.environ.get("KERAS_BACKEND") != "jax":
        return None
    import jax

    folder = Path(cache_root) / JAX_CACHE_DIR
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    jax.config.update("jax_compilation_cache_dir", str(folder))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return folder


__all__ = ["BACKENDS", "BackendChoice", "INSTALL", "activate", "backend_problem", "choose_backend",
           "enable_compilation_cache", "installed", "jax_has_cuda", "torch_has_cuda"]
