"""The checked-in generated code matches proto/ (regenerate with `make proto`)."""
from pathlib import Path

from flying import protogen
from flying.v1 import flying_pb2


def test_generated_code_is_current(tmp_path):
    generated = protogen.generate(tmp_path)
    assert generated, "protoc produced nothing"
    for path in generated:
        checked_in = protogen.ROOT / "flying" / "v1" / path.name
        assert checked_in.read_text() == path.read_text(), f"{path.name} is stale: run make proto"


def test_names_the_issue_fixed():
    agent = flying_pb2.DESCRIPTOR.services_by_name["Agent"]
    router = flying_pb2.DESCRIPTOR.services_by_name["Router"]
    assert set(agent.methods_by_name) == {"Generate", "Session", "Reconfigure", "GetStatus",
                                          "Abort", "ExportKV"}
    assert set(router.methods_by_name) == {"Generate", "GetClusterStatus", "Reconfigure"}
    assert agent.methods_by_name["Generate"].server_streaming
    req = flying_pb2.ReconfigureRequest(instance_sizes=[2, 1, 1], mode=flying_pb2.HARD)
    assert list(req.instance_sizes) == [2, 1, 1]
    assert Path(protogen.PROTO_DIR / "flying" / "v1" / "flying.proto").exists()
