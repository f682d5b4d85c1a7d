"""t2: Transformer-Squared self-adaptive LLMs as a command-line tool.

The flow, one sub-package per stage (docs/architecture.md; the method: docs/method.md):

    models/     name -> ModelRef -> identity (fingerprint) -> loaded model; which matrices are targets
    decompose/  W = U diag(S) Vh for every target matrix, stored once in the registry
    svf/        an expert is one z per matrix: W'(z) = U diag(S * z) Vh applied to / restored from the model
    train/      z trained with REINFORCE on a task's reward (runs, checkpoints, rollout backends)
    eval/       accuracy of base weights or an expert on a task split, with its interval
    experts/    trained experts listed, imported, mixed, transferred, exported, shared on the Hub
    adapt/      few-shot mixing weights for several experts (cross-entropy method)
    ask/        two-pass inference: pass 1 chooses z (strategies), pass 2 answers with W'(z)
    cli/        the `t2` command: thin commands over the stages; `registry` (beside t2cli) stores it all
"""

__version__ = "0.1.0"
