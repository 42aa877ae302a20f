"""Topology discovery through a fake NVML module, and the CPU fallback."""
from __future__ import annotations

from types import SimpleNamespace

from agent.topology import discover, tp_sizes_allowed


class FakeNVML:
    """Four GPUs; NVLink between 0-1 and 2-3 only (two islands)."""
    NVML_P2P_CAPS_INDEX_NVLINK = 3
    NVML_P2P_STATUS_OK = 0
    NVML_P2P_STATUS_NOT_SUPPORTED = 5

    def __init__(self, links):
        self.links, self.shut = links, False

    def nvmlInit(self):
        pass

    def nvmlShutdown(self):
        self.shut = True

    def nvmlDeviceGetCount(self):
        return 4

    def nvmlDeviceGetHandleByIndex(self, i):
        return i

    def nvmlDeviceGetName(self, h):
        return b"NVIDIA H100 80GB HBM3"

    def nvmlDeviceGetMemoryInfo(self, h):
        return SimpleNamespace(total=80 << 30, used=(1 + h) << 30)

    def nvmlDeviceGetP2PStatus(self, a, b, index):
        assert index == self.NVML_P2P_CAPS_INDEX_NVLINK
        ok = frozenset((a, b)) in self.links
        return self.NVML_P2P_STATUS_OK if ok else self.NVML_P2P_STATUS_NOT_SUPPORTED


class NoDriver:
    class NVMLError_LibraryNotFound(Exception):
        pass

    def nvmlInit(self):
        raise self.NVMLError_LibraryNotFound("libnvidia-ml.so.1 not found")


def test_nvlink_islands_limit_tp_sizes():
    nvml = FakeNVML({frozenset((0, 1)), frozenset((2, 3))})
    topo = discover(4, nvml)
    assert topo.kind == "nvml" and nvml.shut
    assert [d.nvlink_peers for d in topo.devices] == [(1,), (0,), (3,), (2,)]
    assert topo.devices[2].memory_used == 3 << 30 and "H100" in topo.devices[0].name
    assert tp_sizes_allowed(topo, (1, 2, 4), 4) == (1, 2)


def test_full_nvlink_mesh_allows_every_size():
    links = {frozenset((a, b)) for a in range(4) for b in range(4) if a != b}
    assert tp_sizes_allowed(discover(4, FakeNVML(links)), (1, 2, 4), 4) == (1, 2, 4)


def test_no_driver_falls_back_to_cpu_slots():
    topo = discover(3, NoDriver())
    assert topo.kind == "cpu" and len(topo.devices) == 3
    assert "NVMLError_LibraryNotFound" in topo.note
    assert tp_sizes_allowed(topo, (1, 3), 3) == (1, 3)


def test_real_pynvml_on_this_machine_never_raises():
    topo = discover(2)
    assert topo.kind in ("cpu", "nvml")
