"""Every built-in task's train/valid/test membership is pinned: the splits must never change.

An expert's validation accuracy, the best-step choice and every test figure in the docs hold only
for the items they were measured on. A change of ``SPLIT_SEED``, of ``seeded_split`` or of a task's
item ids silently moves items between splits (test items into training); these hashes make it loud.
The constants were computed once from the code as it stood when they were written.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from t2cli.tasks import TaskError, get_task, list_tasks, needs_registry

# task -> sha256 of its sorted item ids, one line per id, per split
PINNED = {
    "addition": {
        "train": "4692768b927c49eea6e5b85dcc06da3055b5b4f8817f76390bd0fe023a7a0b2f",
        "valid": "325787c00890e81357989175c09925141f2f2ee322741781b5dcd98adc55be78",
        "test": "7a3411b5ed9327753bd8a8827cea65fe53fe7158505c36d4eb2aa9e004590278",
    },
    "arc-challenge": {
        "train": "4abd0bcfcb134a9ba6627a7e6276320cc94628e6df92cd8fda1f68202f3608f1",
        "valid": "4a5953b786245d574beb58dbe4cc512e0efc65d2f9455b3d1302f5b0c94942c0",
        "test": "e6a39c1b2afc23300cda579ce13b58b0e213b7dddf7a4d5981b20b9ea4d304c4",
    },
    "arc-easy": {
        "train": "d8e89910b8e392183303583b24292ed81b1dfd3a6b7495b2c3f646866faa5e54",
        "valid": "2c169889c33175e62950cf225d75c412bde7798b1980520345889f3e09c819d7",
        "test": "871e1e97f8612f6f89e665412bf9bf0c27829daa80060efe8b06b0e794a6ed94",
    },
    "arithmetic": {
        "train": "3e1a154eb613697f504f01a9eab76a64d0d412672eb3de9b266b293e498e4728",
        "valid": "db290c6da34ea4e248b2f1166bff8f186485d3872a9433f65079238ff419b2ef",
        "test": "762a26938a9e02dce7352624413642ad2417c69a0721faa72dacf294bda9d0e9",
    },
    "coding": {
        "train": "306a1f6ea316f2b4a6161d50e20b382416810719649fe850cd38c58bc636a9a4",
        "valid": "68cc344d000aeb7803eeefc309dc9631bd19ba2eacedb29beb0a47636c9e020d",
        "test": "9b81c64713306ddfbe4b4170df7869ce9690b5a1f5dd0d7d013745e7102d5193",
    },
    "gsm8k": {
        "train": "113f54dde08d7aca04d8d0a4552c3296bd5c4049ccb2ea2d4511dbadf539e122",
        "valid": "8b13f9e9f2c2956e107eda8837c7af6e2403af43d52e90a80238c68d869ebf92",
        "test": "44ca18bacb2cceba94cb67dd15955a78b7f3b4396b63ee158a6c6ba5c641c9d5",
    },
    "humaneval": {
        "train": "22f1b6459ba12e017a4a14818438bf5103e0c6915d7bc1a98841f476dcd0b966",
        "valid": "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",  # no items
        "test": "4bdf3b3ca1a4dec8015017cddebc01834a45549e852c5061e8b0762670776516",
    },
    "logic": {
        "train": "5f7552de1cd2cc6625ca4d35e24330df607ebe9b86ed4fe97c3aa5e98db30677",
        "valid": "3c65e5ad119e689f18f78937acb1bf229b83e75bd913214af6771bbaac4217c2",
        "test": "129b4ac04bfba40a8c3828903ab1b0ff634c4643a01e90177ef016507d04da47",
    },
    "math500": {
        "train": "940a590363197fa36550e7fd1ae48b9dfc20f6a31b87ca73ef1cbe54e5bdc8da",
        "valid": "53b97a222153b5018bf04119f1d7ff45934e00c2d4a589273c04f849b69d47f8",
        "test": "6b99aeeca78a2c5d89dc6b710239e154df1aa73d521c0c71f7ffe53f37a30b62",
    },
    "mbpp": {
        "train": "1649938500f92a6cd10dcd8ea70b4003d4a960ac368e60825cb6f9f36e866d72",
        "valid": "c48e772cbef8fb9e038228ea06a34b892a5fb56983d7f27d132c5a244ddd5180",
        "test": "7c929a00dbefecbdd682e1264138f9ffc1e9e1220d707c3b57c217e6d89781c3",
    },
    "shapes": {
        "train": "562bcf95769f3fef7cc4d1a000a10636e1b354b8ad5041f810f4b0e1682b7ebe",
        "valid": "8531bd7dd68c96dcac2a455903048557b868200be1a90a2734552a54cde6e8a0",
        "test": "3c9f9c1e26db3ee0c4915a876a754ea63a04b8442d999bb8403c6076fc8ec75e",
    },
    "string-ops": {
        "train": "4bf0d1fdc822861f5ebf717cf438bb48286dbcd4283635bdb72fef57afcf7ad6",
        "valid": "e911fbb2843df75114aaf449fde743a9349e0f846e91f9a0f2b400cf30e867d8",
        "test": "6cfdd99a86989a9dd744e170af72fb17ee35091194504d2d6c4e4ef5ea6e1692",
    },
}

# Generated tasks (t2cli.tasks.generated): their ids are draw numbers, so the pin covers each item's
# question and gold too (a changed generator would keep the ids and change the items).
PINNED_GENERATED = {
    "addition-3digit": {
        "train": "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "valid": "d5c8f1325f96cf4d328e978db33489d57c76b188a5e26dff658861853135d175",
        "test": "40e9d252fc27ad78b04ce97e9d2aefa022385b31fedbd4a7261b6c98bd6e5d3a",
    },
    "possession": {
        "train": "b0eb723a64fe315ce51dda608f1b08aca0c6c795e861a8e7f323dd20dc13b878",
        "valid": "8c040cd5eef403932b036e188dc6d9a578107fd06303db79f4ad60ecc1e2611b",
        "test": "d17ce5a7eb174839cfd8d124de4a7b9c2991297c4f03264cbcda62dd79c68b64",
    },
    "possession-long": {
        "train": "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "valid": "de8a75999aa033bd997ac2914a81d1779cd2b24d14e2475753bd816834389519",
        "test": "78f996f65bb45bc56c4c8083f08961f4eb322ffe5d30f9ccc5c070c665690bb1",
    },
    "python-types": {
        "train": "dbcf2c36143091689bdc3a5198ad922ed7a3a4baf1cd5ac79b4facbedabbf57b",
        "valid": "5c5aea0586eedf14a2199c71bc79eaadd7ebb1852f6fb80046717eab517278b5",
        "test": "fa643db2a06713cdbd183696e8584cf02d4b30cc2c90d616f097cecc036a116b",
    },
    "python-types-expr": {
        "train": "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "valid": "d868e84ac0a40e72d16c642376bcc62fc2c08d369a987ea412dfd6d8114d9cfe",
        "test": "dd90022ba8d3f30f9f8908b75a7cb31c4e289ded42160bcd6a626e550851153d",
    },
}

# A custom task file without "split" fields: 20 items cut 60/20/20 by the same seeded split.
PINNED_CUSTOM = {
    "train": "3be023f17d13624fbaaf8d4975f9263d0cb0529cfed188b41501049224075093",
    "valid": "ec6d91594dee1fbe913c393e3c464190c623700102bb7f119f7287108844604e",
    "test": "df364ee1dac7852496fa7390018505595c9af3b236e0380f89d0b367f9f260fa",
}


def split_hashes(task) -> dict[str, str]:
    """sha256 of the sorted item ids of each split."""
    return {
        split: hashlib.sha256("\n".join(sorted(item.id for item in task.split(split))).encode()).hexdigest()
        for split in ("train", "valid", "test")
    }


def test_every_built_in_task_has_pinned_splits() -> None:
    """A new built-in task must pin its splits here too (registry-built tasks such as dispatch excepted)."""
    names = {task.name for task in list_tasks() if not needs_registry(task.name)}
    assert names == set(PINNED) | set(PINNED_GENERATED)


@pytest.mark.parametrize("name", sorted(PINNED))
def test_split_membership_is_pinned(name: str) -> None:
    try:
        task = get_task(name)
        task.split("train")
    except TaskError as exc:
        if "is not installed" in str(exc):
            pytest.skip(str(exc))
        raise
    assert split_hashes(task) == PINNED[name], f"{name}: the split membership changed"


@pytest.mark.parametrize("name", sorted(PINNED_GENERATED))
def test_generated_task_items_are_pinned(name: str) -> None:
    task = get_task(name)
    hashes = {
        split: hashlib.sha256(
            "\n".join(sorted(f"{i.id}\t{i.prompt}\t{i.answer}" for i in task.split(split))).encode()
        ).hexdigest()
        for split in ("train", "valid", "test")
    }
    assert hashes == PINNED_GENERATED[name], f"{name}: the generated items changed"


def test_custom_task_split_membership_is_pinned(tmp_path: Path) -> None:
    path = tmp_path / "pinned.jsonl"
    path.write_text(
        "".join(
            json.dumps({"prompt": f"{i} + {i} = ?", "answer": str(2 * i), "kind": "number"}) + "\n" for i in range(20)
        )
    )
    task = get_task(str(path))
    assert {split: len(task.split(split)) for split in ("train", "valid", "test")} == {
        "train": 12,
        "valid": 4,
        "test": 4,
    }
    assert split_hashes(task) == PINNED_CUSTOM
