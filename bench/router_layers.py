"""Which decoder layer and pooling should the router read? Accuracy per (pooling, layer).

    python bench/router_layers.py [--per-class 200] [--every 3]

Needs category experts on the embedded model in $T2_HOME (as `t2 router train` does). For
each pooling (mean over the prompt's tokens, last token) and every `--every`-th layer (plus
the last), fits the router's classifier on that layer's features alone (``t2cli.router.fit``,
the C grid chosen on validation) and prints its accuracy on the validation prompts and on
the hand-written set (bench/data/dispatch_handwritten.jsonl, classes without an expert
counting as `other`). Features of all layers come from one forward per prompt.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.console import Console
from rich.table import Table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", type=int, default=200)
    parser.add_argument("--every", type=int, default=3)
    parser.add_argument("--handwritten", default=str(Path(__file__).parent / "data" / "dispatch_handwritten.jsonl"))
    args = parser.parse_args()

    from t2cli.eval.accuracy import wilson_interval
    from t2cli.home import open_registry
    from t2cli.router.data import router_prompts
    from t2cli.router.features import prompt_features
    from t2cli.router.fit import fit_classifier
    from t2cli.svf.adaptable import load_adaptable
    from t2cli.tasks.dispatch_task import OTHER, category_experts

    with open_registry() as registry:
        adaptable = load_adaptable(registry, None, device="cpu")
        experts = category_experts(registry, adaptable.base_model_id)
    classes = (*sorted(e.category for e in experts), OTHER)
    train = router_prompts(experts, "train", per_class=args.per_class)
    valid = router_prompts(experts, "valid", per_class=max(args.per_class // 4, 10))
    rows = [json.loads(line) for line in Path(args.handwritten).read_text().splitlines() if line.strip()]
    hand = [(r["prompt"], r["label"] if r["label"] in classes else OTHER) for r in rows]
    depth = adaptable.identity.num_layers
    layers = sorted({*range(0, depth, args.every), depth - 1})
    table = Table(title=f"router accuracy by layer ({', '.join(classes)}; {len(train.prompts)} training prompts)")
    for column in ("pooling", "layer", "valid", "hand-written", "95% CI (hand-written)"):
        table.add_column(column, justify="right")
    width = adaptable.model.config.hidden_size
    for pooling in ("mean", "last"):
        features = {
            name: prompt_features(adaptable.model, adaptable.tokenizer, list(prompts), layers=layers, pooling=pooling)
            for name, prompts in (("train", train.prompts), ("valid", valid.prompts), ("hand", [p for p, _ in hand]))
        }
        for j, layer in enumerate(layers):
            cut = slice(j * width, (j + 1) * width)
            fitted = fit_classifier(
                features["train"][:, cut], train.labels, features["valid"][:, cut], valid.labels, classes
            )
            x = (features["hand"][:, cut] - fitted.mean) / fitted.scale
            predicted = (x @ fitted.coef.T + fitted.intercept).argmax(-1).tolist()
            right = sum(classes[p] == label for p, (_, label) in zip(predicted, hand))
            low, high = wilson_interval(right, len(hand))
            table.add_row(
                pooling,
                str(layer),
                f"{fitted.valid_accuracy:.1%}",
                f"{right / len(hand):.1%}",
                f"[{low:.1%}, {high:.1%}]",
            )
    Console(width=120).print(table)


if __name__ == "__main__":
    main()
