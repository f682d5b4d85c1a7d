"""Starter banks: experts and a router shipped with t2 for a base model, installed into a registry on first use.

``manifest`` reads and checks a bank folder, ``install`` registers it, ``build`` writes one
from a registry (the last step of ``scripts/bank.sh``).
"""
