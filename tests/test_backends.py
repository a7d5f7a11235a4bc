"""Training on every installed Keras backend (issue #18): the backend setting, the loss on each backend, a
JAX job without TensorFlow that is killed, resumed and cancelled, and its model scored under TensorFlow.

TensorFlow and JAX are in requirements.txt (CI runs both); PyTorch is optional: its tests run where
`torch` is installed in this Python and are skipped with the reason elsewhere. Jobs on JAX run in their
own process (Keras picks its backend once per process) with `import tensorflow` made to fail, as on the
GPU machine, which has no TensorFlow.
"""
from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cxrcore.errors import ConfigError
from cxrcore.train import jobs
from cxrcore.train import backend
from cxrcore.train.trainconfig import config_from_dict
from tests.test_jobs import status_of, wait_for
from tests.test_training import make_shapes_dataset

ROOT = Path(__file__).resolve().parent.parent
HAS_TORCH = importlib.util.find_spec("torch") is not None
NEEDS_TORCH = pytest.mark.skipif(not HAS_TORCH, reason="PyTorch is not installed in this Python (optional backend)")
NO_TENSORFLOW = '''
import sys
class _NoTensorFlow:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("tensorflow", "tf_keras"):
            raise ImportError(name + " is blocked: a job on another backend must not import TensorFlow")
sys.meta_path.insert(0, _NoTensorFlow())
'''


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    return make_shapes_dataset(tmp_path_factory.mktemp("data") / "shapes", counts=(("train", 48), ("valid", 24),
                                                                                   ("test", 8)), size=32)


@pytest.fixture(scope="module")
def no_tensorflow(tmp_path_factory) -> Path:
    """A folder whose sitecustomize.py makes `import tensorflow` fail in a process that has it on PYTHONPATH."""
    folder = tmp_path_factory.mktemp("no_tensorflow")
    (folder / "sitecustomize.py").write_text(NO_TENSORFLOW)
    return folder


def tiny(dataset: Path, **changes):
    settings = {"preset": "demo", "dataset": str(dataset), "input_size": 32, "batch_size": 8, "epochs": 3,
                "augmentation": False, "early_stopping_patience": 0, "reduce_lr_patience": 0, "predict_test": False}
    settings.update(changes)
    return config_from_dict(settings)


# ---------------------------------------------------------------------------------------------
# The setting and the choice of "auto" (no framework imported)


def test_backend_is_a_validated_setting_recorded_in_config(shapes):
    assert tiny(shapes).backend == "auto"
    assert tiny(shapes, backend="jax").to_dict()["backend"] == "jax"
    with pytest.raises(ConfigError, match="setting 'backend'.*'jaxx' is not one of auto, tensorflow, jax, torch") as err:
        tiny(shapes, backend="jaxx")
    assert "did you mean 'jax'" in str(err.value)


def test_auto_takes_the_backend_that_sees_a_gpu_and_tensorflow_without_one(monkeypatch):
    present = {"tensorflow": True, "jax": True, "torch": True}
    monkeypatch.setattr(backend, "installed", lambda name: present[name])
    monkeypatch.setattr(backend, "jax_has_cuda", lambda: True)
    monkeypatch.setattr(backend, "torch_has_cuda", lambda: True)
    assert backend.choose_backend("auto", has_gpu=False).name == "tensorflow"
    assert backend.choose_backend("auto", has_gpu=True).name == "jax"
    monkeypatch.setattr(backend, "jax_has_cuda", lambda: False)
    assert backend.choose_backend("auto", has_gpu=True).name == "torch"
    monkeypatch.setattr(backend, "torch_has_cuda", lambda: False)
    assert backend.choose_backend("auto", has_gpu=True).name == "tensorflow"
    present["tensorflow"] = False  # the GPU machine: no TensorFlow at all
    assert backend.choose_backend("auto", has_gpu=False).name == "jax"
    assert backend.choose_backend("jax").why == "backend = jax in the settings."
    with pytest.raises(ConfigError, match="the tensorflow backend is not installed.*pip install tensorflow"):
        backend.choose_backend("tensorflow")


@pytest.mark.skipif(HAS_TORCH, reason="PyTorch is installed here: nothing to refuse")
def test_the_cli_refuses_a_backend_that_is_not_installed_before_making_a_run_folder(shapes, tmp_path):
    done = subprocess.run([sys.executable, "-m", "cxrcore", "train", "--preset", "demo", "--dataset", str(shapes),
                           "--set", "backend=torch", "--runs-root", str(tmp_path / "runs")],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "the torch backend is not installed" in done.stderr and "pip install torch" in done.stderr
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


# ---------------------------------------------------------------------------------------------
# The loss is the same number on every backend


_LOSS = """
import json, sys
import numpy as np
import keras
from cxrcore.train.loss import weighted_loss, weighted_loss_from_logits
rng = np.random.default_rng(0)
y = (rng.random((16, 14)) < 0.3).astype("float32")
z = rng.normal(0, 2, (16, 14)).astype("float32")
wp, wn = rng.random(14).astype("float32"), rng.random(14).astype("float32")
t = keras.ops.convert_to_tensor
out = {"backend": keras.backend.backend(),
       "logits": float(keras.ops.convert_to_numpy(weighted_loss_from_logits(t(y), t(z), wp, wn))),
       "probs": float(keras.ops.convert_to_numpy(weighted_loss(t(y), keras.ops.sigmoid(t(z)), wp, wn)))}
print(json.dumps(out))
"""


def _loss_on(name: str) -> dict:
    """The loss computed under Keras' `name` backend: in this process when it runs that backend, else in a child."""
    import keras

    if keras.backend.backend() == name:
        namespace: dict = {}
        exec(compile(_LOSS.replace("print(json.dumps(out))", ""), "loss", "exec"), namespace)
        return namespace["out"]
    env = {**os.environ, "KERAS_BACKEND": name, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}
    done = subprocess.run([sys.executable, "-c", _LOSS], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("name", ["jax", pytest.param("torch", marks=NEEDS_TORCH)])
def test_the_weighted_loss_is_the_same_on_every_backend(name):
    """Under torch the loss once failed: numpy weights times a torch tensor (numpy's __mul__ went first)."""
    from cxrcore.train.loss import weighted_loss_numpy

    rng = np.random.default_rng(0)
    y = (rng.random((16, 14)) < 0.3).astype("float32")
    z = rng.normal(0, 2, (16, 14)).astype("float32")
    wp, wn = rng.random(14).astype("float32"), rng.random(14).astype("float32")
    reference = weighted_loss_numpy(y, 1 / (1 + np.exp(-z.astype(np.float64))), wp, wn, epsilon=0)
    here = _loss_on("tensorflow")
    there = _loss_on(name)
    assert there["backend"] == name and here["backend"] == "tensorflow"
    assert there["logits"] == pytest.approx(here["logits"], rel=1e-6, abs=1e-6)
    assert there["probs"] == pytest.approx(here["probs"], rel=1e-6, abs=1e-6)
    assert there["logits"] == pytest.approx(reference, rel=1e-5)


# ---------------------------------------------------------------------------------------------
# A JAX job: no TensorFlow in its process, killed with -9, resumed, cancelled, resumed, finished


def _job_env(no_tensorflow: Path, cache: Path, delay: float) -> dict[str, str]:
    return {"PYTHONPATH": str(no_tensorflow), "CXR_CACHE_ROOT": str(cache), "CXR_TRAIN_STEP_DELAY_S": str(delay)}


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _mid_epoch_after(run_dir: Path, pid: int, epochs: int):
    """Process `pid` is training, after `epochs` epochs, inside the next one (not an earlier process' last status)."""
    return lambda: ((s := status_of(run_dir)).get("pid") == pid and s.get("state") == "running"
                    and s.get("epochs_done", 0) >= epochs and s.get("phase") == "training"
                    and 0 < s.get("step", 0) < s.get("steps", 0) and s)


def _finished(run_dir: Path) -> dict:
    wait_for(lambda: jobs.summarize_run(run_dir).state not in jobs.ACTIVE_STATES, timeout=240, interval=0.3)
    return status_of(run_dir)


@pytest.mark.parametrize("name", ["jax", pytest.param("torch", marks=NEEDS_TORCH)])
def test_a_job_without_tensorflow_resumes_after_kill_and_cancel_and_tensorflow_scores_its_model(
        name, shapes, no_tensorflow, tmp_path):
    config = tiny(shapes, backend=name, epochs=3, predict_test=True)
    run_dir = jobs.create_run(tmp_path / "runs", config)
    env = _job_env(no_tensorflow, tmp_path / "cache", 0.25)
    pid = jobs.launch(run_dir, env=env)
    try:  # killed with -9 inside epoch 2: the checkpoint of epoch 1 is what a resume starts from
        status = wait_for(_mid_epoch_after(run_dir, pid, 1), timeout=240)
        assert status["backend"] == name and status["state"] == "running"
        _kill(pid)
        wait_for(lambda: jobs.summarize_run(run_dir).state == "interrupted", 10)
    finally:
        _kill(pid)
    done_before = jobs.read_json(run_dir / "checkpoints" / "state.json")["epochs_done"]
    assert 1 <= done_before < 3
    pid = jobs.launch(run_dir, resume=True, env=env)
    try:  # cancelled (SIGTERM, as the page's Cancel) inside the next epoch
        wait_for(_mid_epoch_after(run_dir, pid, done_before), timeout=240)
        assert jobs.cancel(run_dir) is True
        wait_for(lambda: status_of(run_dir).get("state") == "cancelled", timeout=60)
    finally:
        _kill(pid)
    assert jobs.read_json(run_dir / "checkpoints" / "state.json")["epochs_done"] >= done_before
    jobs.launch(run_dir, resume=True, env={**env, "CXR_TRAIN_STEP_DELAY_S": "0"})
    final = _finished(run_dir)
    log = (run_dir / "train.log").read_text()
    assert final["state"] == "finished" and final["epochs_done"] == 3, jobs.log_tail(run_dir)
    assert "is blocked" not in log and log.count(f"Keras backend: {name}") == 3
    assert f"continuing at epoch {done_before + 1}" in log
    assert list(jobs.read_metrics(run_dir)["epoch"]) == [1, 2, 3]
    run = jobs.read_json(run_dir / "run.json")
    assert run["backend"] == name and len(run["resumes"]) == 2
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))

    # the model is an ordinary .keras file: TensorFlow (this process) scores the test images as the job did
    from cxrcore.train.model import load_model

    loaded = load_model(run_dir / "best.keras")
    assert loaded.info.metadata["backend"] == name
    written = pd.read_csv(run_dir / "predictions" / "test.csv")
    images = [str(Path(config.image_root) / image) for image in written["Image"]]
    probs = loaded.predict_paths(images)[:, [loaded.info.labels.index(c[5:]) for c in written.columns[1:]]]
    np.testing.assert_allclose(probs, written.iloc[:, 1:].to_numpy(), atol=1e-4)


def test_a_new_process_refuses_to_switch_the_backend_of_a_running_keras():
    import keras

    with pytest.raises(ConfigError, match=f"already runs Keras on {keras.backend.backend()}"):
        backend.activate("jax" if keras.backend.backend() != "jax" else "tensorflow")
    os.environ["KERAS_BACKEND"] = keras.backend.backend()


@pytest.mark.parametrize("name", ["jax"])
def test_probe_times_steps_on_the_chosen_backend(name, shapes, no_tensorflow, tmp_path):
    script = textwrap.dedent(f"""
        import json
        from cxrcore.train.trainconfig import config_from_dict
        from cxrcore.train.probe import probe
        config = config_from_dict({{"preset": "demo", "dataset": {str(shapes)!r}, "input_size": 32, "batch_size": 8,
                                   "backend": {name!r}, "augmentation": False}})
        print(json.dumps(probe(config, batches=2).to_dict()))
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(no_tensorflow), str(ROOT)]),
           "CXR_CACHE_ROOT": str(tmp_path / "cache")}
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["batches_per_epoch"] == 6 and result["seconds_per_batch"] > 0 and name in result["device"]


def test_jax_data_parallel_spreads_each_batch_over_the_devices(shapes, no_tensorflow, tmp_path):
    """Two XLA CPU devices stand in for two GPUs: keras.distribution.DataParallel, a global batch of 2 x 8."""
    config = tiny(shapes, backend="jax", epochs=1, distribution="mirrored", max_train_images=32)
    run_dir = jobs.create_run(tmp_path / "runs", config)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(no_tensorflow), str(ROOT)]),
           "CXR_CACHE_ROOT": str(tmp_path / "cache"), "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    done = subprocess.run([sys.executable, "-m", "cxrcore", "train", "--config", str(run_dir / "config.json"),
                           "--ignore-job-limit"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    run = jobs.read_json(run_dir / "run.json")
    assert run["replicas"] == 2 and run["global_batch_size"] == 16 and "DataParallel over 2" in run["strategy"]
    assert list(jobs.read_metrics(run_dir)["epoch"]) == [1] and status_of(run_dir)["state"] == "finished"


def test_precision_is_bfloat16_where_the_gpu_has_it_float16_elsewhere_and_off_on_cpus(shapes, monkeypatch):
    from cxrcore.train import devices

    gpus = ["NVIDIA H200"]
    monkeypatch.setattr(devices, "has_bfloat16", lambda _backend, found: bool(found) and found[0].endswith("H200"))
    assert devices.precision_policy(tiny(shapes), "jax", []) == "float32"
    assert devices.precision_policy(tiny(shapes), "jax", gpus) == "mixed_bfloat16"  # no loss scaling
    assert devices.precision_policy(tiny(shapes), "torch", ["Tesla V100"]) == "mixed_float16"  # loss-scaled
    assert devices.precision_policy(tiny(shapes, mixed_precision="off"), "jax", gpus) == "float32"
    assert devices.precision_policy(tiny(shapes, mixed_precision="on"), "tensorflow", []) == "mixed_float16"
