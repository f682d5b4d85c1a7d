"""``python -m t2cli``: the ``t2`` command (what ``torchrun -m t2cli`` and ``accelerate launch -m t2cli`` run)."""

from t2cli.cli.app import main

if __name__ == "__main__":
    main()
