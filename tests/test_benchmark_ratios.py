"""The benchmark's ratio arithmetic (the benchmark itself is a script that prints figures, not a test)."""

import copy
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from benchmark_tinygiant import best_decoding, decode_bytes_per_token, encoder_floor_s, ratios, whisper_flops
from limits import measure_limits, ratio_spread
from serving import ratios as serving_ratios
from serving import workload_limit

from configuration_tinygiant import whisper_large_v3_turbo_config
from int8_tinygiant import quantize_int8

LIMITS = {"bf16_tflops": 0.35, "int8_tops": 0.7, "read_gb_per_s": 30.0}


def test_whisper_window_flops_match_the_hand_count():
    linear, other = whisper_flops(whisper_large_v3_turbo_config(), 1500)
    assert linear + other == pytest.approx(2.27e12, rel=0.01)  # 32 layers of 1280 dims over 1500 frames
    assert whisper_flops(whisper_large_v3_turbo_config(), 500)[0] == pytest.approx(linear / 3, rel=0.01)
    # With int8 linears only the linear part runs at the int8 rate.
    assert encoder_floor_s(whisper_large_v3_turbo_config(), 1500, LIMITS, True) == pytest.approx(
        linear / 0.7e12 + other / 0.35e12)


def test_decode_bytes_count_layers_norm_and_head_and_halve_in_int8(model):
    lm = model.model.language_model
    expected = sum(p.numel() * p.element_size() for m in (lm.layers, lm.norm, model.lm_head) for p in m.parameters())
    assert decode_bytes_per_token(model) == expected
    bf16 = copy.deepcopy(model).to(torch.bfloat16)
    bf16_bytes = decode_bytes_per_token(bf16)
    assert bf16_bytes == expected // 2
    assert 0.5 * bf16_bytes < decode_bytes_per_token(quantize_int8(bf16)) < 0.6 * bf16_bytes  # int8 + scales


def run(ttft30, ttft10, whisper30, decoding, peak=None, ready=None, load_peak=None, followup=None):
    return {"clip30": {"ttft_s": ttft30, "whisper_s": whisper30}, "clip10": {"ttft_s": ttft10}, "decoding": decoding,
            "peak_rss_mb": peak, "rss_ready_mb": ready, "peak_rss_load_mb": load_peak, "followup": followup}


def candidate(rate, bytes_per_token, exact=True, **agreement):
    return {"decode_tokens_per_s": rate, "bytes_per_token": bytes_per_token, "tokens_equal_plain": exact, **agreement}


def test_best_decoding_keeps_the_tokens_or_agrees_closely():
    agreeing = dict(teacher_forced_top1_agreement=0.96, teacher_forced_min_pearson_r=0.995)
    decoding = {"generate": candidate(10.0, 1e9), "static_cache": candidate(20.0, 1e9),
                "lossy": candidate(99.0, 1e9, exact=False),  # changes the tokens, no agreement measured: never counts
                "drifting": candidate(80.0, 1e9, exact=False, teacher_forced_top1_agreement=0.8,
                                      teacher_forced_min_pearson_r=0.999)}
    assert best_decoding(decoding) == ("static_cache", 20.0, 1e9)
    decoding["llama"] = candidate(40.0, 0.5e9, exact=False, **agreeing)
    assert best_decoding(decoding) == ("llama", 40.0, 0.5e9)


def test_ratios_are_best_over_naive_and_against_the_limits():
    naive = run(10.0, 9.0, 8.0, {"generate": candidate(7.0, 1.2e9), "static_cache": candidate(12.0, 1.2e9)})
    int8 = run(6.0, 4.5, 4.0, {"generate": candidate(9.0, 0.6e9), "static_cache": candidate(20.0, 0.6e9)},
               ready=2000, load_peak=2300)
    best = run(5.0, 3.0, 4.0, None, peak=2300, followup={"first_ttft_s": 5.0, "followup_ttft_s": 1.0})
    peer = {"name": "peer", "ttft_s": 20.0, "decode_tokens_per_s": 2.0, "peak_rss_mb": 9200}
    r = ratios(LIMITS, naive, int8, best, peer, whisper_large_v3_turbo_config())
    assert r["decode_vs_ceiling_bf16"] == pytest.approx(12.0 / 25.0, abs=1e-3)  # 30 GB/s / 1.2 GB = 25 tok/s
    assert r["decode_vs_ceiling_int8"] == pytest.approx(20.0 / 50.0, abs=1e-3)
    assert r["ttft30_speedup_vs_naive"] == 2.0 and r["ttft10_speedup_vs_naive"] == 3.0
    assert r["ttft30_speedup_vs_naive_pytorch_llm"] == pytest.approx(10.0 / 6.0, abs=1e-3)
    assert r["ttft10_speedup_vs_naive_pytorch_llm"] == 2.0
    assert r["decode_speedup_vs_naive"] == pytest.approx(20.0 / 7.0, abs=1e-3)
    assert r["followup_ttft_vs_first"] == 0.2 and r["int8_peak_rss_vs_resident"] == 1.15
    assert r["encoder_vs_floor_best"] == pytest.approx(4.0 / encoder_floor_s(
        whisper_large_v3_turbo_config(), 1500, LIMITS, True), abs=1e-3)
    assert r["best_decoding"] == {"bf16": "static_cache", "int8": "static_cache"}
    assert r["peer"] == {"name": "peer", "ttft30_ratio": 0.25, "decode_ratio": 10.0, "peak_rss_ratio": 0.25}
    assert ratios(LIMITS, naive, int8, best, None, whisper_large_v3_turbo_config())["peer"] is None


def test_limits_are_medians_of_passes_with_their_spread():
    limits = measure_limits(quick=True, repeats=3)
    for name in ("bf16_tflops", "int8_tops", "read_gb_per_s"):
        low, high = limits[f"{name}_spread"]
        assert 0 < low <= limits[name] <= high
    assert len(limits["read_bytes_per_pass"]) == 3


def test_ratio_spread_follows_the_limit():
    limits = {"read_gb_per_s": 30.0, "read_gb_per_s_spread": [20.0, 40.0]}
    # A rate over a ceiling made of the limit: lower against the fastest pass.
    assert ratio_spread(0.6, limits, "read_gb_per_s") == [0.45, 0.9]
    # A time over a floor computed at the limit's rate: higher against the fastest pass.
    assert ratio_spread(1.5, limits, "read_gb_per_s", time_over_floor=True) == [1.0, 2.0]
    assert ratio_spread(0.6, {"read_gb_per_s": 30.0}, "read_gb_per_s") is None


def test_serving_limit_adds_compute_and_the_batched_decoding_share():
    cost = {"audio_flops": 0.6e12, "projector_flops": 0.02e12, "prefill_flops": 0.4e12, "prompt_tokens": 500,
            "decode_weight_bytes": 1.2e9, "decode_flops_per_token": 1.2e9}
    limits = {"bf16_tflops": 2.0, "read_gb_per_s": 24.0, "bf16_tflops_spread": [1.0, 2.5]}
    limit = workload_limit(cost, limits, batch=16, new_tokens=128)
    # 0.5 s of GEMMs a request, and 128 steps of max(1.2 GB / 24 GB/s, 16 x 1.2 GFLOP / 2 TFLOP/s) = 0.05 s
    # shared by 16.
    assert limit["decode_step_s"] == 0.05 and limit["decode_bound"] == "memory"
    assert limit["requests_per_s"] == pytest.approx(1 / (0.5 + 128 * 0.05 / 16), abs=1e-4)
    assert workload_limit(cost, {**limits, "read_gb_per_s": 1e6}, 16)["decode_bound"] == "compute"

    def run(rps, ttft, first=None, followup=None):
        return {"requests_per_s": rps, "ttft_p50_s": ttft}, {"first_ttft_s": first, "followup_ttft_p50_s": followup}

    sequential, pipe_followup = run(0.1, 4.0, 4.0, 3.0)
    c16, vllm_followup = run(0.6, None, 2.0, 0.5)
    pipeline = {"sequential": sequential, "followup": pipe_followup}
    vllm = {"c1": {"ttft_p50_s": 2.0}, "c16": c16, "followup": vllm_followup}
    r = serving_ratios(pipeline, vllm, {"requests_per_s": 1.2}, limits, cost)
    assert r["c16_vs_limit"] == 0.5 and r["throughput_ratio_c16"] == 6.0 and r["ttft_p50_c1_ratio"] == 0.5
    assert r["followup_ttft_ratio"] == 0.25 and r["pipeline_followup_ttft_ratio"] == 0.75
    assert r["followup_ttft_floor"] == pytest.approx(0.42 / 1.0, abs=1e-3)
    assert r["spread"]["c16_vs_limit"] == [0.4, 1.0]  # the GEMM-bound limit over the GEMM rate's spread
