"""bench/vlm_gpu.py: the tiny run goes through decompose, train and the paired comparison; the real run refuses
a machine without a GPU, the model or the data, in one line each, before anything loads."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from bench import vlm_gpu
from registry import Registry
from t2cli.experts.catalog import list_experts

REPO = Path(__file__).resolve().parents[1]


def test_tiny_run_decomposes_trains_and_compares_base_and_expert(tmp_path: Path, capsys) -> None:
    report_path = tmp_path / "vlm.json"
    home = tmp_path / "home"
    code = vlm_gpu.main(["--tiny", "--home", str(home), "--json", str(report_path), "--eval-limit", "12"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert vlm_gpu.TABLE_HEAD.splitlines()[0] in out
    row = next(line for line in out.splitlines() if line.startswith("| shapes (test) | 12 |"))
    assert "% [" in row and row.count("|") == 8  # accuracies with Wilson intervals, gains / losses, McNemar p
    report = json.loads(report_path.read_text())
    (comparison,) = report["comparisons"]
    assert comparison["n"] == 12 and 0.0 <= comparison["p"] <= 1.0
    assert comparison["gains"] - comparison["losses"] == comparison["expert_correct"] - comparison["base_correct"]
    assert report["plan"]["train_task"] == "shapes" and report["expert"]
    with Registry.open(home) as registry:
        (expert,) = list_experts(registry)  # the registered expert, trained by t2's own loop
    assert expert.name == report["expert"] and expert.task == "shapes"


def test_the_real_run_refuses_in_one_line_what_this_machine_lacks(
    tiny_vlm_dirs, hf_cache: Path, capsys, monkeypatch
) -> None:
    def refusal(*args: str) -> str:
        assert vlm_gpu.main(list(args)) == 1
        captured = capsys.readouterr()
        lines = [line for line in captured.err.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: ") and not captured.out, captured
        return lines[0]

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert "no CUDA GPU here" in refusal() and "--tiny" in refusal()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # past the GPU check; nothing touches CUDA
    model = refusal()
    assert "llava-next-8b (llava-hf/llama3-llava-next-8b-hf) is not on this machine" in model
    assert "hf download llava-hf/llama3-llava-next-8b-hf" in model and str(hf_cache) in model
    data = refusal("--model", str(tiny_vlm_dirs["llava"]))
    assert "TextVQA is not in the HF cache" in data and "hf download lmms-lab/textvqa --repo-type dataset" in data
