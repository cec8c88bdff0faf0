#!/usr/bin/env python3
"""P6 (benches/WORKLOADS.md): bidirectional attention of an encoder layer, 32 x 1024 tokens, 16 heads,
head dim 64, bf16, timed on PyTorch's SDPA backends (cuDNN, flash, efficient) with is_causal=False,
to set beside `cargo bench --bench prefill`'s P6 in the same lease. A peer's timing script,
not part of the product (which needs no Python)."""
import json, torch
from torch.nn.attention import SDPBackend, sdpa_kernel

b, h, n, d = 32, 16, 1024, 64
q, k, v = (torch.randn(b, h, n, d, device="cuda", dtype=torch.bfloat16) for _ in range(3))
flops = 4 * b * h * d * n * n
name = torch.cuda.get_device_name()
for be in (SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION):
    try:
        with sdpa_kernel(be):
            f = lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=False)
            for _ in range(5):
                f()
            times = []
            for _ in range(30):
                s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                s.record(); f(); e.record(); torch.cuda.synchronize()
                times.append(s.elapsed_time(e))
        ms = sorted(times)[len(times) // 2]
        tf = flops / (ms * 1e-3) / 1e12
        print(f"| P6 | torch SDPA {be.name} non-causal | {ms * 1e3:.1f} us | {tf:.1f} TFLOP/s |")
        print(json.dumps({"bench": "peer", "workload": "P6", "device": name, "backend": be.name, "median_us": round(ms * 1e3, 2), "tflops": round(tf, 2)}))
    except Exception as ex:  # a backend that does not serve the shape
        print(f"| P6 | torch SDPA {be.name} | unavailable: {ex} |")
