"""`directories._PathTree`, the set of directories `stale_subtrees` keeps: the same answers as a plain set
of paths with the subtree scan it replaces, on random paths and removals."""

from __future__ import annotations

import random

import pytest

from accel.drivers.nydus.directories import _discard_tree, _PathTree

NAMES = ["a", "b", "ab", "a.b", "c d", ""]  # "" and prefixes of one another: what a scan could mistake


def _random_path(rng: random.Random) -> str:
    return "/".join(rng.choice(NAMES[:-1]) for _ in range(rng.randint(1, 4)))


@pytest.mark.parametrize("seed", range(30))
def test_the_tree_answers_as_a_set_with_a_subtree_scan(seed: int) -> None:
    rng = random.Random(seed)
    tree, plain = _PathTree(), set()
    for _ in range(300):
        path = rng.choice([_random_path(rng), ""])
        if rng.random() < 0.5:
            batch = [_random_path(rng) for _ in range(rng.randint(1, 5))]
            tree.update(batch)
            plain.update(batch)
        else:
            keep_root = rng.random() < 0.3
            tree.discard_tree(path, keep_root=keep_root)
            _discard_tree(plain, path, keep_root=keep_root)
        probes = {*plain, _random_path(rng), _random_path(rng), ""}
        assert {p for p in probes if p in tree} == {p for p in probes if p in plain}


def test_dropping_a_directory_drops_its_subtree_not_its_namesakes() -> None:
    tree = _PathTree()
    tree.update(["usr", "usr/lib", "usr/lib/x", "usrlocal", "usr.d"])
    tree.discard_tree("usr", keep_root=True)
    assert ["usr" in tree, "usr/lib" in tree, "usr/lib/x" in tree] == [True, False, False]
    tree.discard_tree("usr", keep_root=False)
    assert "usr" not in tree and "usrlocal" in tree and "usr.d" in tree
