"""What a worker group needs from its device kind, checked before anything starts.

`check(device, workers)` runs in the agent before its servers bind and in
`WorkerGroup.start`: on a node that cannot serve `device` it raises `FailedPrecondition` with
one line naming the missing piece (a CPU-only torch, too few visible GPUs, a vLLM built without
CUDA), instead of a worker's traceback minutes later. The decision is a pure function of the
facts (`missing`), tested on CPU for every branch. Also pure: the CUDA KV-pool budget and the
TP group name.
"""
from __future__ import annotations

from dataclasses import dataclass

from flying_core.errors import FailedPrecondition


@dataclass(frozen=True)
class CudaFacts:
    torch_version: str
    torch_cuda: str | None     # torch.version.cuda: None on a CPU-only build
    gpus: int                  # torch.cuda.device_count() (0 without a driver)
    vllm_version: str | None   # None: vLLM not importable
    vllm_platform: str         # vllm.platforms.current_platform.device_type


def cuda_facts() -> CudaFacts:
    import torch
    gpus = torch.cuda.device_count() if torch.version.cuda else 0
    try:
        import vllm
        from vllm.platforms import current_platform
        vllm_version, platform = vllm.__version__, str(current_platform.device_type)
    except Exception:  # noqa: BLE001 - any import failure means no usable vLLM
        vllm_version, platform = None, ""
    return CudaFacts(torch.__version__, torch.version.cuda, gpus, vllm_version, platform)


def missing(facts: CudaFacts, workers: int) -> str | None:
    """The first missing piece for a CUDA worker group of `workers` GPUs, or None."""
    if facts.torch_cuda is None:
        return (f"torch {facts.torch_version} is a CPU-only build; a CUDA node needs the CUDA "
                "build of torch and vLLM (`make setup DEVICE=gpu` or the CUDA image)")
    if facts.gpus < workers:
        return (f"{facts.gpus} CUDA device(s) visible, --workers {workers} needs one each "
                "(check the driver, CUDA_VISIBLE_DEVICES, the container's GPU request)")
    if facts.vllm_version is None:
        return "vLLM is not installed; a CUDA node needs vLLM 0.32 built for CUDA"
    if facts.vllm_platform != "cuda":
        return (f"vLLM {facts.vllm_version} is built for {facts.vllm_platform or 'no'} "
                "platform, not CUDA; install vLLM's CUDA wheel (`make setup DEVICE=gpu`)")
    return None


def check(device: str, workers: int, facts: CudaFacts | None = None,
          enforce_eager: bool = True) -> None:
    """Raise FailedPrecondition (one line) unless this machine can start `device` workers."""
    kind = device.split(":")[0]
    if kind == "cpu":
        return
    if kind != "cuda":
        raise FailedPrecondition(f"device {device!r}: only cpu and cuda are supported")
    why = missing(facts or cuda_facts(), workers)
    if why:
        raise FailedPrecondition(f"--device cuda cannot start: {why}")
    if not enforce_eager:
        raise FailedPrecondition("--device cuda needs --enforce-eager (enforce_eager = true) "
                                 "for now: CUDA graphs captured per TP size are not built yet")


def tp_group_name(device: str, size: int) -> str:
    """Name of the TP-size-`size` communicator group. On CUDA exactly "tp": vLLM's
    CudaCommunicator turns custom all-reduce and symmetric memory on only when
    `unique_name.split(":")[0] == "tp"` (any other name silently falls back to pynccl).
    On CPU, any name starting with "tp" enables the shared-memory all-reduce; the size in the
    name keeps the CPU shm segments' names readable."""
    return "tp" if device.split(":")[0] == "cuda" else f"tp{size}fly"


def cuda_kv_bytes(free: int, total: int, requested: int, utilization: float = 0.9,
                  activation_reserve: int = 2 << 30) -> int:
    """Bytes for one GPU's KV pool, measured after weights, view models and communicators
    exist (`torch.cuda.mem_get_info()` -> free, total): at most `requested`, and leave
    `(1 - utilization) * total` plus an activation reserve free. 0 when nothing is left."""
    budget = free - int((1 - utilization) * total) - activation_reserve
    return max(0, min(requested, budget))


def worker_device(device: str, rank: int) -> str:
    """A worker's torch device: the CPU, or its own GPU (`cuda:{rank}`, made current)."""
    if device.split(":")[0] == "cpu":
        return "cpu"
    import torch
    torch.cuda.set_device(rank)
    return f"cuda:{rank}"


def kv_pool_bytes(kv_bytes: int, device: str) -> int:
    """The KV pool's size: `kv_bytes` on CPU; on a GPU at most that, from what is free now
    (after weights, view models and communicators), refused if nothing is left."""
    if device == "cpu":
        return kv_bytes
    import torch
    free, total = torch.cuda.mem_get_info(device)
    n = cuda_kv_bytes(free, total, kv_bytes)
    if n <= 0:
        raise FailedPrecondition(f"{device}: {free >> 20} MiB free of {total >> 20} MiB after "
                                 "loading the weights; no room for a KV cache")
    return n
