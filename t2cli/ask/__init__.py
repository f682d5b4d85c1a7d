"""Stage 3, two-pass inference: pass 1 chooses the z (strategies), pass 2 answers with it."""
