"""Run Triton's CPU server from PyPI ``nvidia-pytriton`` on a model repository, on loopback only.

``nvidia-pytriton`` 0.7.0 ships ``tritonserver`` 2.51 with the Python backend only (no onnxruntime
or TensorRT backends), which is what a CPU repository (``rfdeploy triton-repo --cpu``) needs. The
package pins numpy < 2, so it lives in its own environment::

    python3 -m venv .venv-triton && .venv-triton/bin/pip install nvidia-pytriton==0.7.0
    python -m rfdeploy.deploy.triton_server REPO --server-env .venv-triton --http-port 8000 --grpc-port 8001

The server wants the Python stub inside its backend folder, and the package keeps one stub per
Python version elsewhere, so a private backend folder of links is assembled for each start. The
server binds 127.0.0.1 only (it binds every interface by default) with metrics off; give it
another address behind your own proxy if it must be reached from elsewhere. :class:`TritonServer`
always stops what it started: SIGTERM to its process group (server and stubs), SIGKILL after a
grace period, and the stubs' shared-memory regions are removed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from rfdeploy.core.errors import BackendUnavailableError, InputError, RfdeployError
from rfdeploy.deploy.triton import server_site_packages

LOOPBACK = "127.0.0.1"
# Each stub's shared-memory pool starts at this size and grows in these steps; a batch of eight
# 1024 px tiles is 100 MB, and 1 MB steps (the default) make it grow a hundred times.
SHM_DEFAULT_BYTES = 64 << 20
SHM_GROWTH_BYTES = 64 << 20


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def free_port() -> int:
    """A TCP port free on the loopback interface now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


class ServerInstall:
    """The pieces of an nvidia-pytriton installation (in a Python environment's site-packages)."""

    def __init__(self, server_env: str | os.PathLike):
        self.site = server_site_packages(server_env)
        root = self.site / "pytriton" / "tritonserver"
        self.binary = root / "bin" / "tritonserver"
        self.python_backend = root / "backends" / "python"
        self.stubs = root / "python_backend_stubs"
        self.libs = self.site / "nvidia_pytriton.libs"

    def stub(self, version: tuple[int, int]) -> Path:
        p = self.stubs / f"{version[0]}.{version[1]}" / "triton_python_backend_stub"
        if not p.is_file():
            have = sorted(d.name for d in self.stubs.iterdir()) if self.stubs.is_dir() else []
            raise BackendUnavailableError(f"nvidia-pytriton has no Python stub for Python {version[0]}.{version[1]} "
                                          f"(has {', '.join(have) or 'none'})")
        return p

    def backend_dir(self, dest: Path, version: tuple[int, int]) -> Path:
        """A backend folder ``dest/python`` with the backend library and the stub for ``version``."""
        py = dest / "python"
        py.mkdir(parents=True, exist_ok=True)
        for f in (self.python_backend / "libtriton_python.so", self.python_backend / "triton_python_backend_utils.py",
                  self.stub(version)):
            (py / f.name).symlink_to(f)
        return dest


def repo_python(repo: Path) -> tuple[int, int]:
    """The Python version the repository's models were written for (``python_env.json``), else
    this interpreter's."""
    for f in sorted(repo.glob("*/*/python_env.json")):
        v = json.loads(f.read_text(encoding="utf-8")).get("python")
        if v:
            return int(v[0]), int(v[1])
    return sys.version_info[0], sys.version_info[1]


class TritonServer:
    """``tritonserver`` on ``repo``: ``with TritonServer(repo, ".venv-triton") as s: ... s.http_url``.

    ``http_port``/``grpc_port``: 0 = a free port. ``startup_timeout``: seconds to wait for every
    model to be ready. ``log_path``: the server's output (default: a file in its temporary folder,
    removed on stop; :meth:`log_tail` reads it).
    """

    def __init__(self, repo: str | os.PathLike, server_env: str | os.PathLike, *, http_port: int = 0,
                 grpc_port: int = 0, startup_timeout: float = 180.0, log_path: str | os.PathLike | None = None,
                 extra_args: tuple[str, ...] = ()):
        self.repo = Path(repo).resolve()
        if not self.repo.is_dir():
            raise InputError(f"model repository not found: {self.repo}")
        self.install = ServerInstall(server_env)
        self.http_port = http_port or free_port()
        self.grpc_port = grpc_port or free_port()
        self.startup_timeout = float(startup_timeout)
        self.extra_args = tuple(extra_args)
        self._log_path = Path(log_path) if log_path else None
        self._tmp: Path | None = None
        self._log = None
        self.proc: subprocess.Popen | None = None
        self.shm_prefix = f"rfdeploy_{os.getpid()}_{self.http_port}_"

    @property
    def http_url(self) -> str:
        return f"{LOOPBACK}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{LOOPBACK}:{self.grpc_port}"

    @property
    def log_path(self) -> Path | None:
        return self._log_path

    def command(self, backend_dir: Path) -> list[str]:
        return [
            str(self.install.binary), "--model-repository", str(self.repo), "--backend-directory", str(backend_dir),
            "--http-address", LOOPBACK, "--http-port", str(self.http_port),
            "--grpc-address", LOOPBACK, "--grpc-port", str(self.grpc_port),
            "--allow-metrics=false", "--exit-timeout-secs=10", "--pinned-memory-pool-byte-size=0",
            f"--backend-config=python,shm-default-byte-size={SHM_DEFAULT_BYTES}",
            f"--backend-config=python,shm-growth-byte-size={SHM_GROWTH_BYTES}",
            f"--backend-config=python,shm-region-prefix-name={self.shm_prefix}",
            *self.extra_args,
        ]

    def start(self) -> "TritonServer":
        if self.proc is not None:
            return self
        self._tmp = Path(tempfile.mkdtemp(prefix="rfdeploy-triton-"))
        try:
            backends = self.install.backend_dir(self._tmp / "backends", repo_python(self.repo))
            if self._log_path is None:
                self._log_path = self._tmp / "server.log"
            self._log = open(self._log_path, "wb")
            env = dict(os.environ)
            env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (str(self.install.libs), env.get("LD_LIBRARY_PATH")) if p)
            # its own process group: stop() signals the server and its stub processes together
            self.proc = subprocess.Popen(self.command(backends), stdout=self._log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, env=env, cwd=self._tmp, start_new_session=True)
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        url = f"http://{self.http_url}/v2/health/ready"
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BackendUnavailableError(f"tritonserver exited with status {self.proc.returncode} while starting:\n"
                                              + self.log_tail())
            with contextlib.suppress(urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                with urllib.request.urlopen(url, timeout=2) as r:
                    if r.status == 200:
                        return
            time.sleep(0.5)
        raise BackendUnavailableError(f"tritonserver was not ready within {self.startup_timeout:.0f} s:\n"
                                      + self.log_tail())

    def log_tail(self, lines: int = 40) -> str:
        if self._log_path is None or not self._log_path.is_file():
            return ""
        if self._log is not None:
            self._log.flush()
        text = self._log_path.read_bytes().decode("utf-8", errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, grace: float = 20.0) -> None:
        """Stop the server and its stubs (SIGTERM to the group, SIGKILL after ``grace`` seconds)."""
        proc, self.proc = self.proc, None
        if proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                pass
            # stubs outlive a server killed early; the group takes them too
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and _group_alive(proc.pid):
                time.sleep(0.1)
        if self._log is not None:
            self._log.close()
            self._log = None
        for region in Path("/dev/shm").glob(self.shm_prefix + "*"):
            with contextlib.suppress(OSError):
                region.unlink()
        if self._tmp is not None:
            if self._log_path is not None and self._tmp in self._log_path.parents:
                self._log_path = None
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def __enter__(self) -> "TritonServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m rfdeploy.deploy.triton_server",
                                 description="Serve a model repository with nvidia-pytriton's tritonserver on 127.0.0.1.")
    ap.add_argument("repo", help="model repository (rfdeploy triton-repo OUT --cpu)")
    ap.add_argument("--server-env", required=True, help="the Python environment where nvidia-pytriton is installed")
    ap.add_argument("--http-port", type=int, default=8000)
    ap.add_argument("--grpc-port", type=int, default=8001)
    ap.add_argument("--startup-timeout", type=float, default=180.0)
    args = ap.parse_args(argv)
    stop = {"now": False}

    def on_signal(signum, frame):
        stop["now"] = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        server = TritonServer(args.repo, args.server_env, http_port=args.http_port, grpc_port=args.grpc_port,
                              startup_timeout=args.startup_timeout)
    except RfdeployError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    try:
        try:
            server.start()
        except RfdeployError as e:
            print(f"error: {e}", file=sys.stderr)
            return e.exit_code
        print(f"tritonserver ready: HTTP {server.http_url}, gRPC {server.grpc_url} (Ctrl-C stops it)", flush=True)
        while not stop["now"] and server.alive():
            time.sleep(0.5)
        if not server.alive() and not stop["now"]:
            print(server.log_tail(), file=sys.stderr)
            return 1
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
