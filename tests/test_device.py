"""Device preflight, the CUDA TP group name, the GPU KV budget; the agent refusing
`--device cuda` on this CPU machine before it binds a port."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from flying_core import device
from flying_core.device import CudaFacts, cuda_kv_bytes, missing, tp_group_name
from flying_core.errors import FailedPrecondition

ROOT = Path(__file__).resolve().parents[1]
GOOD = CudaFacts("2.13.0+cu129", "12.9", 8, "0.32.0", "cuda")


def test_a_complete_cuda_node_passes():
    assert missing(GOOD, 8) is None
    device.check("cuda", 8, GOOD)
    device.check("cpu", 64, CudaFacts("2.13.0+cpu", None, 0, None, ""))


@pytest.mark.parametrize("facts,workers,names", [
    (CudaFacts("2.13.0+cpu", None, 0, "0.32.0", "cpu"), 2, "CPU-only build"),
    (GOOD, 9, "8 CUDA device(s) visible, --workers 9"),
    (CudaFacts("2.13.0+cu129", "12.9", 0, "0.32.0", "cuda"), 1, "0 CUDA device(s)"),
    (CudaFacts("2.13.0+cu129", "12.9", 2, None, ""), 2, "vLLM is not installed"),
    (CudaFacts("2.13.0+cu129", "12.9", 2, "0.32.0+cpu", "cpu"), 2,
     "vLLM 0.32.0+cpu is built for cpu platform, not CUDA")])
def test_the_missing_piece_is_named_in_one_line(facts, workers, names):
    with pytest.raises(FailedPrecondition) as e:
        device.check("cuda", workers, facts)
    assert names in str(e.value) and "\n" not in str(e.value)
    assert str(e.value).startswith("--device cuda cannot start: ")


def test_cuda_graphs_are_refused_until_built():
    with pytest.raises(FailedPrecondition, match="needs --enforce-eager .* CUDA graphs"):
        device.check("cuda", 2, GOOD, enforce_eager=False)
    with pytest.raises(FailedPrecondition, match="CPU-only build"):   # the build is named first
        device.check("cuda", 2, CudaFacts("2.13.0+cpu", None, 0, None, ""), enforce_eager=False)
    device.check("cpu", 2, enforce_eager=False)     # CPU compilation is a separate matter


def test_this_machine_reports_its_cpu_torch():
    facts = device.cuda_facts()
    if facts.torch_cuda is not None:
        pytest.skip("a CUDA build of torch is installed here")
    with pytest.raises(FailedPrecondition, match="CPU-only build"):
        device.check("cuda", 1)
    with pytest.raises(FailedPrecondition, match="only cpu and cuda"):
        device.check("rocm", 1)


def test_cuda_tp_groups_are_named_tp_as_custom_allreduce_requires():
    """vLLM's CudaCommunicator keeps custom all-reduce on only for this exact name; read the
    rule from the installed vLLM so a change there fails here."""
    import vllm.distributed.device_communicators.cuda_communicator as cc
    source = Path(cc.__file__).read_text()
    assert 'unique_name.split(":")[0] != "tp"' in source
    for size in (1, 2, 4, 8):
        assert tp_group_name("cuda", size) == "tp"
        assert tp_group_name("cuda:3", size) == "tp"
        assert tp_group_name("cpu", size).startswith("tp")   # CPU shm all-reduce: "tp*"
    assert tp_group_name("cpu", 2) != tp_group_name("cpu", 4)


GROUPS_SCRIPT = """
import os, sys
os.environ["VLLM_DIST_IDENT"] = "flyingtest%d" % os.getpid()
import vllm.distributed.parallel_state as ps
from vllm.config import VllmConfig, set_current_vllm_config
from flying_core.comm_pool import CommunicatorPool
with set_current_vllm_config(VllmConfig()):
    ps.init_distributed_environment(world_size=1, rank=0, local_rank=0, backend="gloo",
                                    distributed_init_method="tcp://127.0.0.1:%s" % sys.argv[1])
    ps.initialize_model_parallel(tensor_model_parallel_size=1)
    pool = CommunicatorPool(1, 0, (1,), "gloo", sys.argv[2])
print("NAME", pool.group(1).unique_name)
"""


@pytest.mark.parametrize("dev,prefix", [("cuda", "tp"), ("cpu", "tp1fly")])
def test_the_communicator_pool_gives_vllm_groups_that_name(dev, prefix):
    """Real vLLM GroupCoordinator in a one-rank gloo world (CPU): its unique name keeps the
    prefix vLLM's communicators test (`_get_unique_name` appends ":<n>")."""
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = subprocess.run([sys.executable, "-c", GROUPS_SCRIPT, str(port), dev], cwd=ROOT,
                         capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr[-2000:]
    name = [ln for ln in out.stdout.splitlines() if ln.startswith("NAME ")][0].split()[1]
    assert name.split(":")[0] == prefix


def test_gpu_kv_budget():
    gib = 1 << 30
    # 141 GiB H200, 100 GiB free after weights: keep 10 % of total + 2 GiB free
    assert cuda_kv_bytes(100 * gib, 141 * gib, 1 << 50) == 100 * gib - int(0.1 * 141 * gib) \
        - 2 * gib
    assert cuda_kv_bytes(100 * gib, 141 * gib, 8 * gib) == 8 * gib    # kv_bytes caps it
    assert cuda_kv_bytes(10 * gib, 141 * gib, 8 * gib) == 0           # nothing left
    assert device.kv_pool_bytes(123, "cpu") == 123 and device.worker_device("cpu", 3) == "cpu"


def test_agent_refuses_cuda_here_before_binding_and_without_a_traceback(tmp_path):
    if device.cuda_facts().torch_cuda is not None:
        pytest.skip("a CUDA build of torch is installed here")
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = subprocess.run(
        [sys.executable, "-m", "flying.cli", "agent", "--device", "cuda", "--workers", "2",
         "--model", str(tmp_path / "no-model-read"), "--port", str(port)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert lines[-1].startswith("flying: --device cuda cannot start: torch ")
    assert "CPU-only build" in lines[-1]
    both = out.stdout + out.stderr
    assert "Traceback" not in both
    assert "agent listening" not in both and "warming" not in both   # no server started
    with socket.socket() as s:                                        # nothing kept the port
        s.bind(("127.0.0.1", port))


def test_worker_group_refuses_cuda_here_before_starting_a_process(tmp_path):
    if device.cuda_facts().torch_cuda is not None:
        pytest.skip("a CUDA build of torch is installed here")
    from flying_core.config import GroupConfig
    from flying_core.group import WorkerGroup
    group = WorkerGroup(GroupConfig(model=str(tmp_path), num_workers=2, device="cuda"))
    with pytest.raises(FailedPrecondition, match="CPU-only build"):
        group.start()
    assert group.procs == []
