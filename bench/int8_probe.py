"""int8 against float32 for each convolution of the shipped SDMNN's inference form at batch 1 (a one-off probe, not
a bench section): ``python bench/int8_probe.py``. Each convolution runs on an input of its own shape, float32 through
oneDNN as ``predict`` runs it, and int8 through ``torch.ao.nn.quantized.Conv3d`` (the x86 engine: fbgemm; weights per
output channel), without and with quantising its input and dequantising its output. Medians of 100 calls, 2 threads.
"""
from __future__ import annotations

import statistics
import time
import warnings

import torch
import torch.ao.nn.quantized as nnq

import sdmnn


def _median_ms(fn, n: int = 100) -> float:
    for _ in range(10):
        fn()
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1e3 * statistics.median(times)


def main() -> None:
    warnings.simplefilter("ignore")  # torch's deprecation of its quantized tensors
    torch.set_num_threads(2)
    torch.backends.quantized.engine = "x86"
    fast = sdmnn.load_model(threads=2, precision="float32")._fast
    seen = []
    hooks = [m.register_forward_hook(lambda m, i, o: seen.append((m, i[0].shape, o.shape)))
             for m in fast.modules() if isinstance(m, torch.nn.Conv3d)]
    with torch.inference_mode():
        fast(torch.zeros(1, fast.config.n_params))
    for h in hooks:
        h.remove()
    print("input -> output, kernel: float32 ms, int8 ms, int8 with (de)quantisation ms")
    with torch.inference_mode():
        for conv, shape_in, shape_out in seen:
            x = torch.randn(shape_in).contiguous(memory_format=torch.channels_last_3d)
            w = conv.weight.detach().float()
            q = nnq.Conv3d(conv.in_channels, conv.out_channels, conv.kernel_size, padding=conv.padding, bias=conv.bias is not None)
            scales = w.abs().amax((1, 2, 3, 4)) / 127 + 1e-12
            q.set_weight_bias(torch.quantize_per_channel(w, scales, torch.zeros(len(w), dtype=torch.long), 0, torch.qint8),
                              None if conv.bias is None else conv.bias.detach().float())
            q.scale, q.zero_point = 0.05, 128
            qx = torch.quantize_per_tensor(x, 0.05, 128, torch.quint8)
            t32 = _median_ms(lambda: conv(x))
            t8 = _median_ms(lambda: q(qx))
            t8_full = _median_ms(lambda: q(torch.quantize_per_tensor(x, 0.05, 128, torch.quint8)).dequantize())
            print(f"{tuple(shape_in)} -> {tuple(shape_out)}, {tuple(conv.kernel_size)}: {t32:.2f}, {t8:.2f}, {t8_full:.2f}")


if __name__ == "__main__":
    main()
