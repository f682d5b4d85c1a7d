"""Cost of keyed rollout sampling (one random stream per sequence) against plain multinomial sampling.

    python bench/sampling.py                          # SmolLM2-135M shapes, random weights, batch 64
    python bench/sampling.py --layers 2 --vocab 128   # a tiny model

``t2 train`` samples rollouts with ``t2cli.runtime.generation.KeyedSampler`` so that what a
prompt's group samples does not depend on how prompts are split over processes
(docs/scaling.md). It keeps the batch (no per-prompt generate calls) but draws a
vocabulary-sized uniform vector per sequence per position from that sequence's own
generator. This prints the time of the same ``generate`` call both ways on a randomly
initialised Llama of the given shape (nothing is downloaded), best of ``--repeat``.
"""

from __future__ import annotations

import argparse
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=30)
    parser.add_argument("--hidden", type=int, default=576)
    parser.add_argument("--intermediate", type=int, default=1536)
    parser.add_argument("--heads", type=int, default=9)
    parser.add_argument("--kv-heads", type=int, default=3)
    parser.add_argument("--vocab", type=int, default=49152)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--prompt-len", type=int, default=48)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    from transformers import LlamaConfig, LlamaForCausalLM, LogitsProcessorList

    from t2cli.runtime.generation import KeyedSampler, sample_key

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        intermediate_size=args.intermediate,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.kv_heads,
        max_position_embeddings=args.prompt_len + args.new_tokens + 8,
        pad_token_id=0,
        eos_token_id=None,
    )
    model = LlamaForCausalLM(config).to(args.device).eval()
    ids = torch.randint(3, args.vocab, (args.batch, args.prompt_len), device=args.device)
    keys = [sample_key(0, 1, row) for row in range(args.batch)]

    def run(keyed: bool) -> float:
        best = float("inf")
        for round_ in range(args.repeat):
            torch.manual_seed(round_)
            start = time.perf_counter()
            with torch.no_grad():
                model.generate(
                    input_ids=ids,
                    attention_mask=torch.ones_like(ids),
                    max_new_tokens=args.new_tokens,
                    min_new_tokens=args.new_tokens,
                    do_sample=not keyed,
                    temperature=None if keyed else 1.0,
                    top_p=None,
                    top_k=None,
                    pad_token_id=0,
                    logits_processor=LogitsProcessorList([KeyedSampler(keys, 1.0)] if keyed else []),
                )
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - start)
        return best

    run(False)  # warm-up
    plain, keyed = run(False), run(True)
    tokens = args.batch * args.new_tokens
    print(
        f"model: {args.layers} layers, hidden {args.hidden}, vocab {args.vocab}; batch {args.batch}, "
        f"{args.new_tokens} new tokens, {args.device}, {torch.get_num_threads()} threads"
    )
    print(f"multinomial sampling: {plain:.3f} s ({tokens / plain:.0f} tok/s)")
    print(f"keyed sampling:       {keyed:.3f} s ({tokens / keyed:.0f} tok/s), {keyed / plain - 1:+.1%}")


if __name__ == "__main__":
    main()
