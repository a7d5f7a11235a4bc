"""Who may start and cancel training jobs: nobody is asked on loopback, the teacher's passcode beyond it.

A server reachable only from this machine (127.0.0.1, ::1, localhost) belongs to the person at it, so
nothing is asked. A server reachable from the network (any other address, an empty one meaning every
interface, a host name, or CXR_CLASSROOM=1 for workers behind a reverse proxy) lets students look but
only the teacher, with the passcode set when starting the server, start or cancel jobs. No Streamlit
here: the glue is dashboard/teacher.py. The passcode is never logged, put in an error message or
handed to training processes (cxrcore.train.jobs removes it from their environment).
"""
from __future__ import annotations

import hashlib
import hmac
import ipaddress
from typing import Mapping

#: Environment variable holding the teacher passcode (or the same key in .streamlit/secrets.toml).
PASSCODE_ENV = "CXR_TEACHER_PASSCODE"
#: Set to 1 by a classroom setup whose workers listen on loopback behind a proxy open to the network.
CLASSROOM_ENV = "CXR_CLASSROOM"
#: Shorter passcodes are refused: a class could guess them.
MIN_PASSCODE_LENGTH = 8
#: How the teacher sets a passcode, quoted wherever the app says one is missing.
HOW_TO_SET = f"{PASSCODE_ENV}=<a passcode of at least {MIN_PASSCODE_LENGTH} characters> make run HOST=0.0.0.0"
_TRUE = ("1", "true", "yes", "on")


def is_loopback(address: str | None) -> bool:
    """True when a listen address reaches only this machine: 127.0.0.0/8, ::1 (also as [::1] or
    ::ffff:127.x), localhost. Empty or None (every interface), other addresses and host names: False."""
    text = (address or "").strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    if not text:
        return False
    if text.lower().rstrip(".") in ("localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"):
        return True
    try:
        ip = ipaddress.ip_address(text.split("%", 1)[0])  # an IPv6 zone ("fe80::1%eth0") is not part of it
    except ValueError:
        return False  # a host name: it may resolve to a network address, so it counts as beyond
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def classroom_flag(env: Mapping[str, str]) -> bool:
    """True when CXR_CLASSROOM is set to 1 (or true / yes / on)."""
    return str(env.get(CLASSROOM_ENV, "")).strip().lower() in _TRUE


def needs_teacher(address: str | None, env: Mapping[str, str]) -> bool:
    """True when starting and cancelling training jobs needs the teacher passcode: the server listens
    beyond loopback (`address` is Streamlit's server.address option) or CXR_CLASSROOM=1 says so."""
    return classroom_flag(env) or not is_loopback(address)


def passcode_problem(passcode: str | None) -> str | None:
    """Why a configured passcode cannot be used (missing, too short), or None when it can."""
    if passcode is None or not passcode.strip():
        return "no teacher passcode is set"
    if len(passcode) < MIN_PASSCODE_LENGTH:
        return f"the teacher passcode is shorter than {MIN_PASSCODE_LENGTH} characters"
    return None


def passcode_matches(given: str | None, expected: str | None) -> bool:
    """Constant-time comparison (hmac.compare_digest of SHA-256 digests, so neither content nor length
    leaks); False whenever `expected` is unusable (see passcode_problem)."""
    if given is None or passcode_problem(expected) is not None:
        return False
    digest = lambda text: hashlib.sha256(text.encode("utf-8")).digest()  # noqa: E731
    return hmac.compare_digest(digest(given), digest(expected))


def without_passcode(env: Mapping[str, str]) -> dict[str, str]:
    """A copy of an environment without the teacher passcode (for child processes)."""
    return {k: v for k, v in env.items() if k != PASSCODE_ENV}


__all__ = ["CLASSROOM_ENV", "HOW_TO_SET", "MIN_PASSCODE_LENGTH", "PASSCODE_ENV", "classroom_flag", "is_loopback",
           "needs_teacher", "passcode_matches", "passcode_problem", "without_passcode"]
