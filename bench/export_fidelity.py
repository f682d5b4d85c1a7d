"""How close `t2 export --lora --rank R` and `t2 export --merged` come to the expert as t2 applies it.

    python bench/export_fidelity.py [--expert NAME] [--ranks 1,4,16,64,576] [--task addition] [--prompts 32]

Needs a trained expert of the embedded model in $T2_HOME (default: the latest trained one).
Reference: the base model with the expert applied by t2 (`SVFModel.apply`). For each variant it
prints, on the first --prompts test prompts of --task (chat template applied):

* weight error: ||delta - delta_R||_F / ||delta||_F over all matrices (`t2 export --lora` reports it);
* max |logit difference| to the reference over every prompt position, and the share of
  positions whose top-1 token agrees with the reference's;
* greedy answers (8 new tokens) identical to the reference's.

Rows: the base weights (the expert's own effect, for scale), each LoRA rank loaded with
`peft.PeftModel.from_pretrained`, and the merged folder loaded with
`AutoModelForCausalLM.from_pretrained`. Every export is written to a temporary folder.
"""

from __future__ import annotations

import argparse
import copy
import tempfile
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

ANSWER_TOKENS = 8


def _latest_trained(registry) -> str | None:
    from registry.queries import experts

    return experts.latest_of_kind(registry, "trained")


def _outputs(model, tokenizer, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor, list[list[int]]]:
    """Logits at every real prompt position [N, V], their mask order, and greedy answers."""
    enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.no_grad():
        logits = model(**enc).logits.float()
        out = model.generate(**enc, max_new_tokens=ANSWER_TOKENS, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    mask = enc["attention_mask"].bool()
    answers = out[:, enc["input_ids"].shape[1] :].tolist()
    return logits[mask], mask, answers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--expert", default=None)
    parser.add_argument("--ranks", default="1,4,16,64,576")
    parser.add_argument("--task", default="addition")
    parser.add_argument("--prompts", type=int, default=32)
    args = parser.parse_args()

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from t2cli.experts.export import export_lora, export_merged
    from t2cli.home import open_registry
    from t2cli.runtime.generation import prepare_tokenizer, render_prompt
    from t2cli.svf.adaptable import load_adaptable
    from t2cli.svf.expert import load_expert
    from t2cli.tasks import get_task

    with open_registry() as registry:
        name = args.expert or _latest_trained(registry)
        if name is None:
            raise SystemExit("no trained expert registered: train one first (t2 train --task addition)")
        expert = load_expert(registry, name)
        adaptable = load_adaptable(registry, None, targets=expert.config.targets, device="cpu")
        model, tokenizer = adaptable.model, prepare_tokenizer(adaptable.tokenizer)
        texts = [render_prompt(tokenizer, item.prompt) for item in get_task(args.task).split("test")[: args.prompts]]

        base_logits, _, base_answers = _outputs(model, tokenizer, texts)
        adaptable.svf.apply(expert.z)
        ref_logits, _, ref_answers = _outputs(model, tokenizer, texts)
        adaptable.svf.restore()
        base_copy = copy.deepcopy(model)  # PEFT wraps the modules of the model it is given

        rows = [("base (no expert)", None, base_logits, base_answers)]
        with tempfile.TemporaryDirectory() as tmp:
            for rank in (int(r) for r in args.ranks.split(",")):
                folder = Path(tmp) / f"lora-{rank}"
                report = export_lora(registry, name, folder, rank=rank)
                peft_model = PeftModel.from_pretrained(copy.deepcopy(base_copy), str(folder)).eval()
                logits, _, answers = _outputs(peft_model, tokenizer, texts)
                rows.append((f"LoRA r={rank} (PEFT)", report.overall_error, logits, answers))
                del peft_model
            merged_dir = Path(tmp) / "merged"
            export_merged(registry, name, merged_dir, adaptable=adaptable)
            merged = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32).eval()
            logits, _, answers = _outputs(merged, tokenizer, texts)
            rows.append(("merged (from_pretrained)", 0.0, logits, answers))

    table = Table(
        title=f"export fidelity: expert {name} ({len(expert.z)} matrices), {len(texts)} {args.task} prompts, "
        f"reference = t2 with the expert applied"
    )
    for column in ("variant", "weight error", "max |Δ logit|", "top-1 agreement", f"same {ANSWER_TOKENS}-token answer"):
        table.add_column(column, justify="left" if column == "variant" else "right")
    ref_top = ref_logits.argmax(-1)
    for label, error, logits, answers in rows:
        agree = (logits.argmax(-1) == ref_top).float().mean().item()
        same = sum(a == b for a, b in zip(answers, ref_answers))
        table.add_row(
            label,
            "-" if error is None else f"{error:.3f}",
            f"{(logits - ref_logits).abs().max().item():.2e}",
            f"{agree:.1%}",
            f"{same}/{len(texts)}",
        )
    Console(width=120).print(table)


if __name__ == "__main__":
    main()
