"""The view loader's scan for tensors left on `meta` sees plain attributes too."""
from __future__ import annotations

import torch
import torch.nn as nn

from flying_core.weights import meta_tensors


def test_scan_finds_parameters_buffers_and_plain_attributes_on_meta():
    with torch.device("meta"):
        m = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
    m[1]._k_scale_cpu = torch.tensor(1.0, device="meta")
    m[0].register_buffer("rot", torch.zeros(3, device="meta"))
    left = meta_tensors(m)
    assert set(left) == {"0.weight", "0.bias", "1.weight", "1.bias", "0.rot",
                         "1._k_scale_cpu"}
    m[1]._k_scale_cpu = torch.tensor(1.0)
    for mod in (m[0], m[1]):
        for name, p in list(mod.named_parameters(recurse=False)):
            setattr(mod, name, nn.Parameter(torch.zeros(p.shape), requires_grad=False))
    m[0].rot = torch.zeros(3)
    assert meta_tensors(m) == []
