"""The CPU benchmark's ONNX arithmetic: the ONNX Runtime paths against the same run's PyTorch paths, and the fastest."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from benchmark_tinygiant import onnx_ratios


def path(ttft30, ttft10, **extra):
    return {"clip30": {"ttft_s": ttft30, "decode_tokens_per_s": extra.pop("decode", None)},
            "clip10": {"ttft_s": ttft10}, **extra}


def test_onnx_paths_are_measured_against_the_fastest_pytorch_path_and_the_int8_pipeline():
    naive = path(4.0, 2.0, decoding={"generate": {"decode_tokens_per_s": 8.0}})
    int8 = path(5.0, 1.6, peak_rss_mb=2000)
    best = path(3.2, 1.0)
    onnx = {"fp32": path(3.6, 2.5, decode=6.0, peak_rss_mb=3000), "q8": path(2.4, 0.8, decode=16.0, peak_rss_mb=1000)}
    r = onnx_ratios(naive, int8, best, onnx, {"torch_free_env_mb": 400, "torch_env_mb": 1600})
    assert r["onnx_q8_ttft30_vs_best_pytorch"] == pytest.approx(2.4 / 3.2, abs=1e-3)  # best is the fastest PyTorch
    assert r["onnx_fp32_ttft30_vs_best_pytorch"] == pytest.approx(3.6 / 3.2, abs=1e-3)
    assert r["onnx_q8_ttft10_speedup_vs_naive"] == 2.5 and r["onnx_q8_decode_speedup_vs_naive"] == 2.0
    assert r["onnx_q8_peak_rss_vs_int8_pytorch"] == 0.5 and r["onnx_env_disk_vs_torch_env"] == 0.25
    assert r["fastest_ttft30_path"] == "onnx_q8"
    onnx["q8"]["clip30"]["ttft_s"] = 3.5
    assert onnx_ratios(naive, int8, best, onnx, None)["fastest_ttft30_path"] == "best"
    assert "onnx_env_disk_vs_torch_env" not in onnx_ratios(naive, int8, best, onnx, None)
