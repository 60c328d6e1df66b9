"""Unit tests of quorum.sim.attacks: the specs, the seeded choice of hostile sites, and what
each attack makes a site send."""

from __future__ import annotations

import pathlib

import numpy as np
import pytest

from examples.mnist.task import task as mnist
from quorum.config import SimFile
from quorum.errors import ConfigError
from quorum.sim import plan
from quorum.sim.attacks import (
    Attack,
    Attacked,
    Colluders,
    LabelPoisonable,
    alie_z,
    assign,
    flipped_labels,
)
from tests.vector_task import labelled
from tests.vector_task import task as vector

SITES = [f"site-{i:04d}" for i in range(100)]


def test_specs_parse_with_their_defaults() -> None:
    assert Attack.parse("signflip") == Attack("signflip", 1.0)
    assert Attack.parse("scale:10") == Attack("scale", 10.0)
    assert Attack.parse("noise") == Attack("noise", 1.0)
    assert str(Attack.parse("noise:0.5")) == "noise:0.5"
    assert str(Attack.parse("labelflip")) == "labelflip"
    for bad, message in [
        ("flip", "unknown attack"),
        ("scale:x", "not a number"),
        ("noise:-1", "σ positive"),
        ("labelflip:2", "no parameter"),
    ]:
        with pytest.raises(ConfigError, match=message):
            Attack.parse(bad)


def test_a_fraction_draws_that_many_sites_seeded_and_names_win() -> None:
    chosen = assign(["0.2=signflip", "site-0007=scale:10"], SITES, seed=3)
    assert len(chosen) == 21 and chosen["site-0007"] == Attack("scale", 10.0)
    assert sum(a.name == "signflip" for a in chosen.values()) == 20
    assert chosen == assign(["0.2=signflip", "site-0007=scale:10"], SITES, seed=3)
    assert chosen != assign(["0.2=signflip", "site-0007=scale:10"], SITES, seed=4)
    for bad, message in [
        (["0.2signflip"], "SITE_OR_FRACTION=ATTACK"),
        (["site-9999=noise"], "no site"),
        (["1.5=noise"], "fraction"),
        (["0.6=noise", "0.6=scale"], "more hostile sites"),
    ]:
        with pytest.raises(ConfigError, match=message):
            assign(bad, SITES, seed=0)


def test_alie_defaults_to_the_papers_z_max() -> None:
    # n = 100, m = 20: s = 51 - 20 = 31, z = Φ⁻¹(69 / 100) ≈ 0.4959
    assert alie_z(100, 20) == pytest.approx(0.4959, abs=1e-4)
    assert {a.param for a in assign(["0.2=alie"], SITES, 0).values()} == {alie_z(100, 20)}
    assert set(assign(["0.2=alie:1.5"], SITES, 0).values()) == {Attack("alie", 1.5)}
    with pytest.raises(ConfigError, match="give z"):
        alie_z(2, 0)


def _sent(attack: str, *, site: str = "s", colluders: Colluders | None = None) -> np.ndarray:
    honest = vector.site("delta=0.5,n=3", "cpu", 0)
    hostile = Attacked(honest, Attack.parse(attack), site, 0, colluders or Colluders())
    params = vector.initial_parameters(0)
    result = hostile.fit(params, {"round": 2})
    assert result.num_examples == 3
    return np.concatenate([v.reshape(-1) for v in result.params.values()])


def test_model_poisoning_attacks_alter_the_honest_update() -> None:
    np.testing.assert_allclose(_sent("signflip"), -0.5)
    np.testing.assert_allclose(_sent("signflip:4"), -2.0)
    np.testing.assert_allclose(_sent("scale:10"), 5.0)
    noise = _sent("noise:2")
    assert noise.std() == pytest.approx(2.0, rel=0.5) and abs(noise.mean()) < 1.5
    np.testing.assert_array_equal(noise, _sent("noise:2"))  # seeded by site and round
    assert not np.array_equal(noise, _sent("noise:2", site="t"))


def test_alie_sites_of_a_host_share_their_honest_updates() -> None:
    colluders = Colluders()
    # Alone, a site has no spread to go on: it sends its honest update.
    np.testing.assert_allclose(_sent("alie:2", colluders=colluders), 0.5)
    assert len(colluders.share(2, {"w": np.full((4, 3), 1.5), "b": np.full(3, 1.5)})) == 2
    # honest updates 0.5, 1.5 and this one's 0.5: μ = 5/6, σ = √2/3
    np.testing.assert_allclose(
        _sent("alie:2", colluders=colluders), 5 / 6 + 2 * np.sqrt(2) / 3, rtol=1e-6
    )
    # a new round takes the last one's updates too while it has fewer than two of its own
    assert len(colluders.share(3, {"w": np.zeros((4, 3)), "b": np.zeros(3)})) == 4
    assert len(colluders.share(3, {"w": np.zeros((4, 3)), "b": np.zeros(3)})) == 2


def test_labelflip_needs_a_task_that_can_poison_its_sites(tmp_path: pathlib.Path) -> None:
    assert isinstance(mnist, LabelPoisonable) and not isinstance(labelled, LabelPoisonable)
    np.testing.assert_array_equal(flipped_labels(np.array([0, 3, 1])), [3, 2, 1, 0])
    sim = SimFile.model_validate(
        {
            "sim": {
                "num_sites": 10,
                "data": "x",
                "partition": {"kind": "iid"},
                "byzantine": ["0.2=labelflip"],
            },
            "run": {"task": "tests.vector_task:labelled"},
        }
    )
    with pytest.raises(ConfigError, match="cannot do: it needs poisoned_site_of"):
        plan.plan(sim, labelled, tmp_path)
    sim.sim.byzantine = ["0.3=signflip"]
    hostile = [s for s in plan.plan(sim, labelled, tmp_path).sites if s.attack is not None]
    assert [str(s.attack) for s in hostile] == ["signflip:1"] * 3


def test_a_poisoned_mnist_site_trains_on_flipped_labels() -> None:
    relabel = flipped_labels(np.arange(10))
    site = mnist.poisoned_site_of("mnist", np.arange(50), "cpu", 0, relabel)
    honest = mnist.site_of("mnist", np.arange(50), "cpu", 0)
    for poisoned, true in zip(
        site.train_batches.dataset, honest.train_batches.dataset, strict=True
    ):
        assert int(poisoned[1]) == 9 - int(true[1])
    # it is evaluated on its true labels
    assert [int(y) for _, y in site.test_batches.dataset] == [
        int(y) for _, y in honest.test_batches.dataset
    ]
