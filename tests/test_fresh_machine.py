"""A fresh machine: `make test` installs chromium itself or stops with one line; data/ and models/ exist."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "tools" / "ensure-debian-package"


def _stub(folder: Path, name: str, body: str) -> None:
    path = folder / name
    path.write_text("#!/bin/bash\n" + body + "\n")
    path.chmod(0o755)


def _machine(tmp_path: Path, *, uid: int, sudo: str | None = None, apt_ok: bool = True) -> tuple[Path, Path]:
    """A PATH with no chromium: `id`, `apt-get` (records its calls, 'installs' chromium) and maybe `sudo`."""
    bin_dir, log = tmp_path / "bin", tmp_path / "calls.log"
    bin_dir.mkdir()
    _stub(bin_dir, "id", f"echo {uid}")
    install = (f'[ "$1" = install ] && {{ printf "#!/bin/bash\\n" > {bin_dir}/chromium; '
               f'/bin/chmod +x {bin_dir}/chromium; }}') if apt_ok else '[ "$1" = install ] && exit 100'
    _stub(bin_dir, "apt-get", f'echo "apt-get $* DEBIAN_FRONTEND=$DEBIAN_FRONTEND" >> {log}\n{install}\nexit 0')
    if sudo == "passwordless":
        _stub(bin_dir, "sudo", f'echo "sudo $*" >> {log}\n[ "$1" = -n ] && shift\nexec "$@"')
        _stub(bin_dir, "true", "exit 0")
    elif sudo == "asks":
        _stub(bin_dir, "sudo", f'echo "sudo $*" >> {log}\necho "sudo: a password is required" >&2\nexit 1')
    return bin_dir, log


def _run(bin_dir: Path) -> subprocess.CompletedProcess:
    env = {"PATH": str(bin_dir), "HOME": str(bin_dir.parent)}
    return subprocess.run(["/bin/bash", str(SCRIPT), "chromium", "chromium", "the browser tests"],
                          env=env, capture_output=True, text=True, timeout=30)


def _calls(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


def test_present_command_installs_nothing(tmp_path):
    bin_dir, log = _machine(tmp_path, uid=1000)
    _stub(bin_dir, "chromium", "exit 0")
    result = _run(bin_dir)
    assert result.returncode == 0, result.stderr
    assert _calls(log) == [] and result.stderr == ""


def test_root_installs_debian_chromium(tmp_path):
    bin_dir, log = _machine(tmp_path, uid=0)
    result = _run(bin_dir)
    assert result.returncode == 0, result.stderr
    assert _calls(log) == ["apt-get update -qq DEBIAN_FRONTEND=noninteractive",
                           "apt-get install -y -qq chromium DEBIAN_FRONTEND=noninteractive"]
    assert (bin_dir / "chromium").exists()


def test_passwordless_sudo_installs_through_sudo(tmp_path):
    bin_dir, log = _machine(tmp_path, uid=1000, sudo="passwordless")
    result = _run(bin_dir)
    assert result.returncode == 0, result.stderr
    calls = _calls(log)
    assert "sudo -n apt-get install -y -qq chromium" in calls
    assert "apt-get install -y -qq chromium DEBIAN_FRONTEND=noninteractive" in calls


@pytest.mark.parametrize("sudo", [None, "asks"])
def test_no_way_to_install_stops_with_one_line(tmp_path, sudo):
    bin_dir, log = _machine(tmp_path, uid=1000, sudo=sudo)
    result = _run(bin_dir)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "error: chromium not found (the browser tests); install it with: sudo apt-get install -y chromium"]
    assert not any(c.startswith("apt-get") for c in _calls(log))


def test_failed_apt_install_says_so(tmp_path):
    bin_dir, log = _machine(tmp_path, uid=0, apt_ok=False)
    result = _run(bin_dir)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "error: installing chromium with apt-get failed; install it with: sudo apt-get install -y chromium")


def test_make_test_checks_chromium_before_pytest():
    """`make test` checks chromium and nginx (the same script) and only then runs pytest; `.ci/run` just calls it."""
    env = {**os.environ, "MAKEFLAGS": ""}
    dry = subprocess.run(["make", "-n", "test"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert dry.returncode == 0, dry.stderr
    lines = dry.stdout.splitlines()
    pytest_line = next(i for i, line in enumerate(lines) if "-m pytest" in line)
    for needed in ("tools/ensure-debian-package chromium chromium", "tools/ensure-debian-package nginx nginx-light"):
        assert next(i for i, line in enumerate(lines) if needed in line) < pytest_line, needed
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in ci and "apt-get" not in ci


@pytest.mark.parametrize("folder", ["data", "models"])
def test_data_and_models_folders_ship_with_a_readme_and_ignore_user_files(folder):
    readme = ROOT / folder / "README.md"
    assert readme.is_file() and "nih" in readme.read_text()
    tracked = subprocess.run(["git", "ls-files", folder], cwd=ROOT, capture_output=True, text=True).stdout.split()
    assert tracked == [f"{folder}/README.md"]
    ignored = subprocess.run(["git", "check-ignore", "-q", f"{folder}/nih/some_user_file.csv"], cwd=ROOT)
    assert ignored.returncode == 0, f"user files in {folder}/ must stay out of git"
