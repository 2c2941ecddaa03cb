"""benchmarks/profile_uvit.py on a tiny model on the CPU: the tables add up and kernels land in the right bins."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
spec = importlib.util.spec_from_file_location("profile_uvit", os.path.join(HERE, "..", "benchmarks", "profile_uvit.py"))
profile_uvit = importlib.util.module_from_spec(spec)
spec.loader.exec_module(profile_uvit)


@pytest.mark.parametrize("name, expected", [
    ("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64", "matmul"),
    ("nvjet_hsh_256x128_64x4_1x2_h_bz_coopA_NTN", "matmul"),
    ("triton_tem_fused_addmm_3", "matmul"),
    ("aten::mm", "matmul"),
    ("cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16_knob_3", "attention"),
    ("_cog_fwd_kernel", "attention"),
    ("triton_per_fused_native_layer_norm_7", "norm"),
    ("triton_poi_fused_add_gelu_mul_12", "fused/elementwise"),
    ("void at::native::vectorized_elementwise_kernel<4, at::native::CUDAFunctor_add<float>>", "fused/elementwise"),
    ("Memcpy DtoD (Device -> Device)", "copy/convert"),
    ("void at::native::(anonymous namespace)::multi_tensor_apply_kernel<FusedAdamMathFunctor>", "optimizer/EMA"),
    ("something_new", "other"),
])
def test_kernel_categories(name, expected):
    assert profile_uvit.category(name) == expected


def test_tiny_profile_tables_add_up(tmp_path):
    out, js = tmp_path / "p.md", tmp_path / "p.json"
    assert profile_uvit.main(["--what", "train-step", "--depth", "1", "--embed-dim", "32", "--heads", "2",
                              "--batch-size", "2", "--iters", "1", "--warmup", "1", "--attention", "softmax,cog",
                              "--out", str(out), "--json", str(js)]) == 0
    rec = json.loads(js.read_text())
    assert [r["attention"] for r in rec["rows"]] == ["softmax", "cog"] and rec["cuda"] is False
    for r in rec["rows"]:
        assert r["wall_ms"] > 0 and r["tflops_wall"] > 0
        assert sum(r["categories"].values()) == pytest.approx(r["kernel_ms"], rel=1e-9)
        assert r["categories"]["matmul"] > 0
        tops = [k["ms"] for k in r["top"]]
        assert tops == sorted(tops, reverse=True) and len(tops) <= 15
    assert rec["rows"][0]["categories"]["attention"] > 0  # SDPA's CPU kernels
    text = out.read_text()
    assert "| softmax |" in text and "by kernel category" in text and "not a measurement" in text


def test_train_loop_profiles_the_trainers_own_step(tmp_path):
    js = tmp_path / "loop.json"
    script = os.path.join(HERE, "..", "benchmarks", "profile_uvit.py")  # a process of its own, as a user runs it
    subprocess.run([sys.executable, script, "--what", "train-loop", "--depth", "1", "--embed-dim", "32", "--heads",
                    "2", "--batch-size", "4", "--iters", "2", "--warmup", "1", "--attention", "softmax",
                    "--json", str(js)], check=True, capture_output=True, timeout=300)
    row = json.loads(js.read_text())["rows"][0]
    hosts = {k["name"] for k in row["top_host"]}
    assert any(n.startswith("Optimizer.step#AdamW") for n in hosts)  # the optimizer step is inside the iteration
    assert row["categories"]["optimizer/EMA"] > 0 and row["categories"]["matmul"] > 0
    assert "cudaDeviceSynchronize" not in hosts
