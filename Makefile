# Two entry points: `make run` (set up, make the demo data once, start the app) and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cksum requirements.txt | cut -d' ' -f1)
HOST   ?= 127.0.0.1
PORT   ?= 8501

.PHONY: run test setup chromium nginx demo demo-model bench clean gpu

$(STAMP): requirements.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	@rm -f $(VENV)/.installed-* && touch $(STAMP)

setup: $(STAMP)

# The built-in teaching dataset; generated once (about a minute), reused afterwards.
demo: setup
	$(PY) -m cxrcore demo --out data/demo

# Optional: the small demo model (a couple of minutes on 2 CPU cores); the Training page offers it too.
demo-model: demo
	$(PY) -m cxrcore train --preset demo --dataset data/demo

run: demo
	$(PY) -m streamlit run Home.py --server.address $(HOST) --server.port $(PORT)

# The browser tests drive Debian's chromium: installed here when missing and possible (root or
# passwordless sudo), otherwise one line says how, before any test runs.
chromium:
	@tools/ensure-debian-package chromium chromium "the browser tests drive Debian's headless chromium"

# Debian's nginx (light build): the classroom's reverse proxy, and the proxy test; installed the same way.
nginx:
	@PATH="$$PATH:/usr/sbin" tools/ensure-debian-package nginx nginx-light "the classroom's reverse proxy and its test"

# Two test processes, one test file each at a time (pytest-xdist): many tests wait on servers and browsers,
# so a 2-core machine runs the suite in about half the time. TEST_WORKERS=0 runs it in one process.
TEST_WORKERS ?= 2
test: setup chromium nginx
	$(PY) -m pytest $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile)

# A GPU training machine: Keras on JAX with CUDA (CUDA=cuda13 by default, CUDA=cuda12 for older NVIDIA
# drivers) and the light requirements, no TensorFlow; training jobs then pick JAX ("auto", see README).
CUDA ?= cuda13
gpu:
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-gpu.txt "jax[$(CUDA)]==0.10.2"
	$(PY) -c "import jax; print('JAX sees', jax.devices())"

bench: setup
	@for f in bench/bench_*.py; do echo "== $$f"; $(PY) $$f || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache test-artifacts

# Classroom: WORKERS Streamlit processes (one per core) behind Debian's nginx on 0.0.0.0:$(PORT), one browser
# kept on one worker by a cookie; Ctrl-C stops everything. CXR_TEACHER_PASSCODE is read from the environment.
WORKERS ?= 2
.PHONY: classroom
classroom: HOST = 0.0.0.0
classroom: demo nginx
	$(PY) scripts/classroom.py --workers $(WORKERS) --host $(HOST) --port $(PORT)
