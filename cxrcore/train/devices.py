"""Where a job runs: its Keras backend started, the devices it sees, how batches spread over them, and the
precision.

`start(config)` is the first thing a job does: it applies the backend (cxrcore.train.backend) before
Keras is imported, then finds the GPUs through that backend. TensorFlow spreads batches with
tf.distribute (MirroredStrategy over a machine's GPUs, MultiWorkerMirroredStrategy across machines from
TF_CONFIG); JAX with keras.distribution.DataParallel over every device it sees (its steps shard each
batch); PyTorch trains on one device. Mixed precision: bfloat16 on GPUs that have it (compute capability
8.0 and up: no loss scaling), float16 with dynamic loss scaling on older GPUs, off on CPUs.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cxrcore.errors import ConfigError
from cxrcore.train import jobs
from cxrcore.train.backend import BackendChoice, activate, choose_backend, enable_compilation_cache
from cxrcore.train.inputs import cache_root
from cxrcore.train.rundir import Log, print_log
from cxrcore.train.trainconfig import TrainConfig

if TYPE_CHECKING:  # pragma: no cover
    import tensorflow as tf


@dataclass
class Runtime:
    """The started backend of a job: devices, strategy (TensorFlow) or distribution (JAX), precision."""

    backend: BackendChoice
    gpus: list[str]
    replicas: int
    strategy_text: str
    precision: str  # a Keras dtype policy: float32, mixed_bfloat16 or mixed_float16
    multi: bool = False
    strategy: Any = None  # tf.distribute strategy (TensorFlow only)
    notes: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.backend.name

    @property
    def mixed(self) -> bool:
        return self.precision != "float32"

    def scope(self) -> Any:
        """Where to build the model: the strategy's scope on TensorFlow (JAX's distribution is global)."""
        return self.strategy.scope() if self.strategy is not None else contextlib.nullcontext()

    def record(self) -> dict[str, Any]:
        """What run.json says about it."""
        return {"backend": self.name, "backend_setting": self.backend.setting, "backend_why": self.backend.why,
                "strategy": self.strategy_text, "replicas": self.replicas, "precision": self.precision,
                "mixed_precision": self.mixed}


def start(config: TrainConfig, *, strategy: Any = None, log: Log = print_log) -> Runtime:
    """Apply the backend, import Keras, find the devices, spread over them, set precision and seed."""
    choice = choose_backend(config.backend)
    activate(choice.name)
    import keras

    log(f"Keras backend: {choice.name} ({choice.why})")
    if choice.name == "jax":
        folder = enable_compilation_cache(cache_root(config))
        if folder:
            log(f"JAX compilation cache: {folder} (a second job with this model skips compiling).")
        runtime = _start_jax(config, choice)
    elif choice.name == "torch":
        runtime = _start_torch(config, choice)
    else:
        runtime = _start_tensorflow(config, choice, strategy)
    runtime.precision = precision_policy(config, choice.name, runtime.gpus)
    keras.config.set_dtype_policy(runtime.precision)
    keras.utils.set_random_seed(config.seed)
    return runtime


def _no_tf_distribution(config: TrainConfig, backend: str) -> None:
    if config.distribution == "multi_worker" or jobs.tf_config_role()[0]:
        raise ConfigError(f"multi-machine training runs on the TensorFlow backend; this job runs on {backend}.",
                          fix='set backend = "tensorflow" with TF_CONFIG on every machine (see README).')


def _start_tensorflow(config: TrainConfig, choice: BackendChoice, strategy: Any) -> Runtime:
    gpus = setup_devices()
    if strategy is None:
        strategy, text, multi = select_strategy(config.distribution, gpus)
    else:
        text, multi = f"{type(strategy).__name__} ({strategy.num_replicas_in_sync} replicas)", False
    return Runtime(choice, gpus, int(strategy.num_replicas_in_sync), text,
                   "float32", multi=multi, strategy=strategy)


def _start_jax(config: TrainConfig, choice: BackendChoice) -> Runtime:
    import jax
    import keras

    _no_tf_distribution(config, "jax")
    devices = jax.devices()
    gpus = [f"{d.device_kind} ({d.platform} {d.id})" for d in devices if d.platform == "gpu"]
    spread = config.distribution == "mirrored" or (config.distribution == "auto" and len(gpus) > 1)
    if spread and len(devices) > 1:
        keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))
        text = f"keras.distribution.DataParallel over {len(devices)} {devices[0].platform.upper()} device(s)"
        return Runtime(choice, gpus, len(devices), text, "float32")
    keras.distribution.set_distribution(None)
    return Runtime(choice, gpus, 1, f"one device ({devices[0].platform.upper()} 0)",
                   "float32")


def _start_torch(config: TrainConfig, choice: BackendChoice) -> Runtime:
    import torch

    _no_tf_distribution(config, "torch")
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    if config.distribution == "mirrored":
        raise ConfigError("distribution = 'mirrored' is not available on the torch backend.",
                          fix='use backend = "jax" (DataParallel) or "tensorflow" (MirroredStrategy) for several GPUs.')
    note = f" (of {len(gpus)} GPUs: one; jax or tensorflow use them all)" if len(gpus) > 1 else ""
    return Runtime(choice, gpus, 1,
                   f"one device ({'GPU 0' if gpus else 'the CPU'}){note}", "float32")


def has_bfloat16(backend: str, gpus: list[str]) -> bool:
    """Whether every visible GPU computes in bfloat16 natively (NVIDIA compute capability 8.0 and up)."""
    if not gpus:
        return False
    try:
        if backend == "jax":
            import jax

            return all(float(getattr(d, "compute_capability", "0") or 0) >= 8.0
                       for d in jax.devices() if d.platform == "gpu")
        if backend == "torch":
            import torch

            return bool(torch.cuda.is_bf16_supported())
        import tensorflow as tf

        return all(tuple(tf.config.experimental.get_device_details(g).get("compute_capability", (0, 0))) >= (8, 0)
                   for g in tf.config.list_physical_devices("GPU"))
    except (ValueError, RuntimeError, TypeError):
        return False


def precision_policy(config: TrainConfig, backend: str, gpus: list[str]) -> str:
    """The Keras dtype policy: mixed_bfloat16 / mixed_float16 on GPUs ("auto" or "on"), float32 on CPUs unless
    "on" (then mixed_float16, as asked), float32 when "off"."""
    if config.mixed_precision == "off" or (config.mixed_precision == "auto" and not gpus):
        return "float32"
    return "mixed_bfloat16" if has_bfloat16(backend, gpus) else "mixed_float16"


def setup_devices() -> list[str]:
    """Visible GPUs (memory growth on, so a probe and a job can share one); [] on CPU."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except (RuntimeError, ValueError):
            pass
    return [g.name for g in gpus]


def select_strategy(distribution: str, gpus: list[str]) -> tuple["tf.distribute.Strategy", str, bool]:
    """(strategy, description, multi_worker): MultiWorkerMirrored from TF_CONFIG, Mirrored over >1 GPU, else one device."""
    import tensorflow as tf

    multi, _chief, _index = jobs.tf_config_role()
    if distribution == "multi_worker" or (distribution == "auto" and multi):
        if not os.environ.get("TF_CONFIG"):
            raise ConfigError("distribution = 'multi_worker' needs the TF_CONFIG environment variable.",
                              fix='set TF_CONFIG on every worker, e.g. {"cluster": {"worker": ["a:2222", "b:2222"]}, '
                                  '"task": {"type": "worker", "index": 0}}.')
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
        return (strategy, f"MultiWorkerMirroredStrategy ({strategy.num_replicas_in_sync} replicas across workers)",
                True)
    if distribution == "mirrored" or (distribution == "auto" and len(gpus) > 1):
        strategy = tf.distribute.MirroredStrategy()
        return strategy, f"MirroredStrategy over {strategy.num_replicas_in_sync} device(s)", False
    device = "GPU 0" if gpus else "the CPU"
    return tf.distribute.get_strategy(), f"one device ({device})", False


def device_label(gpus: list[str], replicas: int, multi: bool) -> str:
    """Short device text for the page: "CPU", "1 GPU", "4 GPUs", "2 workers x 1"."""
    if multi:
        return f"{replicas} replicas, multi-worker"
    if gpus:
        return f"{replicas if replicas > 1 else 1} GPU{'s' if replicas > 1 else ''}"
    return "CPU" if replicas == 1 else f"{replicas} CPU replicas"


__all__ = ["Runtime", "device_label", "has_bfloat16", "precision_policy", "select_strategy",
           "setup_devices", "start"]
