"""Write a t2 home with an older release of t2, for tests/test_old_home.py.

    git worktree add /tmp/t2-old <commit>
    python tests/data/make_old_home.py --code /tmp/t2-old --out tests/data/home-<commit>.tar.gz

The old code (``--code``) runs the commands a user would have run: decompose a tiny random
Llama, train two experts on a small sums task, mix them, evaluate one. The tarball holds the
home, the model folder and the task file, with a MANIFEST.json naming the commit, so a later
release can check that such a home still opens, migrates and works.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TRAIN = [
    "--steps",
    "2",
    "--prompts-per-step",
    "2",
    "--samples-per-prompt",
    "2",
    "--valid-size",
    "2",
    "--max-new-tokens",
    "4",
    "--eval-every",
    "1",
    "--device",
    "cpu",
    "--seed",
    "0",
]


def sums_task(path: Path) -> Path:
    """Twelve two-number sums with explicit splits (8 train, 2 valid, 2 test)."""
    lines = []
    for i in range(12):
        split = "train" if i < 8 else "valid" if i < 10 else "test"
        lines.append(
            json.dumps({"prompt": f"{i} + {i + 1} =", "answer": str(2 * i + 1), "kind": "number", "split": split})
        )
    path.write_text("\n".join(lines) + "\n")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--code", type=Path, required=True, help="a checkout of the older t2")
    parser.add_argument("--out", type=Path, required=True, help="the .tar.gz to write")
    args = parser.parse_args()
    commit = subprocess.run(
        ["git", "-C", str(args.code), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    sys.path.insert(0, str(REPO))
    from tests.tiny_models import build_tiny_model

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model = build_tiny_model("llama", root / "model", seed=0)
        task = sums_task(root / "sums.jsonl")
        env = {**os.environ, "T2_HOME": str(root / "home"), "PYTHONPATH": str(args.code.resolve())}

        def t2(*argv: str) -> None:
            print("$ t2", " ".join(argv), flush=True)
            subprocess.run([sys.executable, "-m", "t2cli", *argv], env=env, cwd=root, check=True)

        t2("decompose", str(model), "--device", "cpu")
        t2("train", "--task", str(task), "--model", str(model), "--name", "sums-v1", *TRAIN)
        t2("train", "--task", str(task), "--model", str(model), "--name", "sums-v2", *TRAIN, "--lr", "0.01")
        t2("mix", "sums-v1", "sums-v2", "--weights", "0.6,0.4", "--name", "sums-mix")
        t2("eval", "--task", str(task), "--expert", "sums-v1", "--model", str(model), "--limit", "2")
        (root / "MANIFEST.json").write_text(
            json.dumps(
                {
                    "commit": commit,
                    "experts": ["sums-v1", "sums-v2", "sums-mix"],
                    "model": "model",
                    "task": "sums.jsonl",
                    "home": "home",
                },
                indent=1,
            )
            + "\n"
        )
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with tarfile.open(args.out, "w:gz") as tar:
            for name in ("MANIFEST.json", "model", "sums.jsonl", "home"):
                tar.add(root / name, arcname=name, filter=lambda info: None if info.name.endswith(".lock") else info)
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes) from t2 {commit[:10]}")


if __name__ == "__main__":
    main()
