"""The ML image's default program: each site's data share and the model that `model fetch` returns."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from swarmlearning.demo import digits
from swarmlearning.local.datasets import Shard

pytestmark = pytest.mark.unit


def test_sites_get_disjoint_label_skewed_shares_of_the_bundled_set(tmp_path: Path) -> None:
    shares = [digits.site_data(tmp_path, i, 3) for i in range(3)]
    tests = {s[2].x.tobytes() for s in shares if s[2] is not None}
    assert len(tests) == 1, "every site evaluates on the same held-out test set"
    seen: set[bytes] = set()
    for train, val, _ in shares:
        rows = {r.tobytes() for r in np.concatenate([train.x, val.x])}
        assert not rows & seen, "sites' shares overlap"
        seen |= rows
        counts = np.bincount(train.y, minlength=10)
        assert counts.max() > 3 * np.median(counts), "label skew: a few classes dominate each share"
    assert 0.1 < len(shares[0][1].y) / (len(shares[0][0].y) + len(shares[0][1].y)) < 0.2


def test_mounted_data_wins_and_a_bad_index_is_named(tmp_path: Path) -> None:
    Shard(np.zeros((5, 64), np.float32), np.arange(5)).save(tmp_path / "train.npz")
    train, val, test = digits.site_data(tmp_path, 7, 1)  # index ignored: the site brought its data
    assert len(train.y) == 5 and val is not None and test is None
    with pytest.raises(ValueError, match=r"SWARM_PEER_INDEX must be in 0\.\.2"):
        digits.site_data(tmp_path / "none", 3, 3)


def test_bad_parameters_name_the_parameter(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        digits.main(["--epochs", "0"])
    assert "--epochs must be between 1 and 1000" in capsys.readouterr().err


def test_a_single_site_gets_the_whole_training_set(tmp_path: Path) -> None:
    one = digits.site_data(tmp_path, 0, 1)
    three = [digits.site_data(tmp_path, i, 3) for i in range(3)]
    assert len(one[0].y) + len(one[1].y) == sum(len(t.y) + len(v.y) for t, v, _ in three)
    assert set(np.unique(one[0].y)) == set(range(10))
