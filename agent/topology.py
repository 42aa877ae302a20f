"""Node topology from NVML (`import pynvml`, package nvidia-ml-py), with a CPU fallback.

TP instances should only span NVLink-connected devices: `tp_sizes_allowed` keeps the aligned
blocks whose devices are all pairwise NVLink peers (every size on a CPU node).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

from flying import logs

log = logs.get("flying.topology")


@dataclass(frozen=True)
class Device:
    index: int
    name: str
    memory_total: int
    memory_used: int
    nvlink_peers: tuple[int, ...] = ()


@dataclass(frozen=True)
class Topology:
    kind: str                     # "nvml" | "cpu"
    devices: tuple[Device, ...] = ()
    note: str = ""
    nvlink: dict[int, frozenset[int]] = field(default_factory=dict)

    def block_connected(self, workers) -> bool:
        if self.kind != "nvml" or len(workers) < 2:
            return True
        return all(b in self.nvlink.get(a, frozenset()) for a in workers for b in workers
                   if a != b)


def _cpu(note: str, workers: int) -> Topology:
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    devs = tuple(Device(i, f"cpu-slot{i}", 0, 0) for i in range(workers))
    return Topology("cpu", devs, f"{note}; {workers} CPU worker slots on {cpus} cores")


def discover(workers: int, nvml=None) -> Topology:
    """Read devices and NVLink pairs; never raises (a CPU fallback, logged once)."""
    try:
        if nvml is None:
            import pynvml as nvml
        nvml.nvmlInit()
    except Exception as e:  # noqa: BLE001 - no driver, no library: CPU node
        topo = _cpu(f"no NVIDIA driver ({type(e).__name__})", workers)
        log.info("topology: CPU fallback", reason=topo.note)
        return topo
    try:
        count = nvml.nvmlDeviceGetCount()
        handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
        peers: dict[int, set[int]] = {i: set() for i in range(count)}
        for i in range(count):
            for j in range(count):
                if i != j:
                    status = nvml.nvmlDeviceGetP2PStatus(handles[i], handles[j],
                                                         nvml.NVML_P2P_CAPS_INDEX_NVLINK)
                    if status == nvml.NVML_P2P_STATUS_OK:
                        peers[i].add(j)
        devices = []
        for i, h in enumerate(handles):
            mem = nvml.nvmlDeviceGetMemoryInfo(h)
            name = nvml.nvmlDeviceGetName(h)
            devices.append(Device(i, name.decode() if isinstance(name, bytes) else name,
                                  int(mem.total), int(mem.used), tuple(sorted(peers[i]))))
        return Topology("nvml", tuple(devices), f"{count} GPUs",
                        {i: frozenset(p) for i, p in peers.items()})
    except Exception as e:  # noqa: BLE001
        topo = _cpu(f"NVML query failed ({e})", workers)
        log.warning("topology: NVML failed, CPU fallback", reason=str(e))
        return topo
    finally:
        try:
            nvml.nvmlShutdown()
        except Exception:  # noqa: BLE001
            pass


def tp_sizes_allowed(topo: Topology, sizes: tuple[int, ...], workers: int) -> tuple[int, ...]:
    """Pool sizes whose every aligned block is NVLink-connected."""
    return tuple(s for s in sizes
                 if all(topo.block_connected(range(a, a + s)) for a in range(0, workers, s)))
