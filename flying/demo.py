"""`flying up --demo`: a short tour through the public front doors (OpenAI REST + Router gRPC)."""
from __future__ import annotations

import threading
import time


def run_demo(base_url: str, router_address: str, workers: int) -> int:
    import grpc
    from openai import OpenAI

    from flying.v1 import flying_pb2 as pb
    from flying.v1 import flying_pb2_grpc as pb_grpc

    client = OpenAI(base_url=f"{base_url}/v1", api_key="unused")
    ask = [{"role": "user", "content": "What is the capital of France?"}]
    t = time.perf_counter()
    r = client.chat.completions.create(model="flying", messages=ask, max_tokens=24,
                                       temperature=0)
    print(f"[DP]  {r.choices[0].message.content!r}  ({(time.perf_counter() - t) * 1e3:.0f} ms)")

    with grpc.insecure_channel(router_address) as ch:
        router = pb_grpc.RouterStub(ch)
        node = router.GetClusterStatus(pb.GetClusterStatusRequest()).nodes[0]
        merged = max(node.possible_tp_sizes)
        text: list[str] = []

        def stream() -> None:
            for chunk in client.chat.completions.create(
                    model="flying", messages=[{"role": "user", "content": "Tell me a story."}],
                    max_tokens=64, temperature=0, stream=True):
                text.append(chunk.choices[0].delta.content or "" if chunk.choices else "")

        th = threading.Thread(target=stream)
        th.start()
        time.sleep(0.5)
        resp = router.Reconfigure(pb.ReconfigureRequest(
            node=node.node, instance_sizes=[merged], mode=pb.HARD), timeout=120)
        print(f"[switch] {list(node.instance_sizes)} -> {list(resp.instance_sizes)} in "
              f"{resp.switch_ms:.1f} ms, {resp.migrated} streams moved with their KV "
              f"({resp.kv_bytes_moved} bytes)")
        th.join()
        print(f"[stream across the switch] {''.join(text)!r}")
        r = client.chat.completions.create(model="flying", messages=ask, max_tokens=24,
                                           temperature=0)
        print(f"[TP{merged}] {r.choices[0].message.content!r}")
        back = router.Reconfigure(pb.ReconfigureRequest(
            node=node.node, instance_sizes=[1] * workers, mode=pb.SOFT), timeout=120)
        print(f"[switch] back to {list(back.instance_sizes)} in {back.switch_ms:.1f} ms")
    return 0
