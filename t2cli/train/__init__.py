"""Stage 2: SVF experts trained with REINFORCE, their runs, checkpoints and rollout backends."""
