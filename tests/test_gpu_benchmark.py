"""benchmarks/gpu.py: its `--quick` run (the GPU benchmark's code on the CPU with tiny parts) and its ratio arithmetic.
The figures it prints are not checked (a benchmark is a script, not a timed test); the report's shape and sense are."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from gpu import (  # noqa: E402
    GRPO_NEEDS,
    PAPER_INFERENCE_GB,
    datasheet_bf16_tflops,
    parse_args,
    ratios,
)


@pytest.fixture(scope="module")
def quick_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu")
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu.py"), "--quick", "--output-dir", str(out)],
                         capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads((out / "gpu-quick.json").read_text()), (out / "gpu-quick.md").read_text(), run.stdout


def test_quick_run_reports_every_step_with_sane_values(quick_report):
    report, markdown, printed = quick_report
    args = report["args"]
    assert report["quick"] and report["device"]["type"] == "cpu"
    assert report["limits"]["bf16_tflops"] > 0 and report["limits"]["read_gb_per_s"] > 0

    sft = report["sft"]
    assert sft["rows"] == args["batch"] and sft["activation_checkpointing"]
    assert sft["sequence_tokens"] > args["question_tokens"] + args["answer_tokens"]  # audio placeholders too
    assert min(sft["step_s_spread"]) <= sft["step_s"] <= max(sft["step_s_spread"])
    # The counted FLOPs of a step (forward and backward) are at least twice the forward's 2 x parameters x tokens
    # of the trainable part, which every token passes through.
    assert sft["model_flops_per_step"] >= 6 * sft["trainable_parameters"] * sft["sequence_tokens"] * sft["rows"]
    assert sft["achieved_tflops"] == pytest.approx(sft["model_flops_per_step"] / sft["step_s"] / 1e12, rel=0.01)
    assert sft["peak_rss_gb"] > 0

    pipeline = report["pipeline"]
    for clip, seconds in zip(("long_clip", "short_clip"), args["clips"]):
        assert pipeline[clip]["clip_s"] == seconds
        assert pipeline[clip]["new_tokens"] == args["new_tokens"]  # exactly that many, each timed
        assert pipeline[clip]["ttft_s"] > 0 and pipeline[clip]["decode_tokens_per_s"] > 0
    assert pipeline["decode_bytes_per_token"] > 0 and pipeline["peak_rss_gb"] > 0

    grpo = report["grpo"]
    if all(importlib.util.find_spec(name) for name in GRPO_NEEDS):  # as here: the project's environment has them
        assert grpo["run"] and grpo["steps_timed"] == args["grpo_steps"]
        assert grpo["seconds"]["generation"] > 0 and grpo["seconds"]["backward"] > 0
        assert sum(grpo["share"].values()) == pytest.approx(1.0, abs=1e-3)
    else:
        assert not grpo["run"] and "not importable" in grpo["why"]

    r = report["ratios"]
    assert 0 < r["sft_mfu_vs_measured_gemm"] and 0 < r["decode_vs_ceiling"] and r["ttft_long_vs_short_clip"] > 0
    assert r["inference_peak_vs_paper_5gb"] == pytest.approx(pipeline["peak_rss_gb"] / PAPER_INFERENCE_GB, abs=1e-3)
    assert r["sft_mfu_vs_datasheet"] is None  # a CPU has no datasheet entry
    assert "| sft_mfu_vs_measured_gemm |" in markdown and markdown in printed


def test_ratios_against_the_limits_the_datasheet_and_the_paper():
    report = {"limits": {"bf16_tflops": 500.0, "bf16_tflops_spread": [400.0, 600.0], "read_gb_per_s": 3000.0,
                         "read_gb_per_s_spread": [2500.0, 3500.0]},
              "device": {"type": "cuda", "name": "NVIDIA H100 80GB HBM3", "memory_gb": 80.0,
                         "datasheet_bf16_tflops": datasheet_bf16_tflops("NVIDIA H100 80GB HBM3")},
              "sft": {"achieved_tflops": 250.0, "peak_reserved_gb": 40.0},
              "pipeline": {"decode_bytes_per_token": 1.5e9, "peak_reserved_gb": 4.0,
                           "long_clip": {"ttft_s": 0.06, "decode_tokens_per_s": 40.0},
                           "short_clip": {"ttft_s": 0.04, "decode_tokens_per_s": 41.0}}}
    r = ratios(report)
    assert r["sft_mfu_vs_measured_gemm"] == 0.5 and r["sft_mfu_vs_datasheet"] == pytest.approx(250 / 989, rel=1e-3)
    assert r["decode_vs_ceiling"] == 0.02  # 40 tok/s against 3000 GB/s / 1.5 GB per token = 2000 tok/s
    assert r["ttft_long_vs_short_clip"] == 1.5
    assert r["inference_peak_vs_paper_5gb"] == 0.8 and r["training_peak_vs_device_memory"] == 0.5
    assert r["spread"]["sft_mfu_vs_measured_gemm"] == [round(0.5 * 500 / 600, 3), round(0.5 * 500 / 400, 3)]


def test_datasheet_peaks_tell_the_h100_kinds_apart():
    assert datasheet_bf16_tflops("NVIDIA H100 PCIe") == 756.0
    assert datasheet_bf16_tflops("NVIDIA H100 80GB HBM3") == 989.0
    assert datasheet_bf16_tflops("NVIDIA A100-SXM4-80GB") == 312.0
    assert datasheet_bf16_tflops("Some Future Card") is None


def test_update_results_is_for_real_runs_only(capsys):
    with pytest.raises(SystemExit):
        parse_args(["--quick", "--update-results"])
    assert "--update-results" in capsys.readouterr().err
