"""Factories for the eager backend's tests, named as ``tests.eager_factories:<function>``: code
outside export.zoo, so the server runs it only with --allow-python-factories."""

from __future__ import annotations

from torch import nn

__all__ = ["linear", "not_a_module"]


def linear() -> nn.Module:
    """An untrained nn.Linear(4, 3): the test saves the weights it loads."""
    return nn.Linear(4, 3)


def not_a_module() -> str:
    return "a string"
