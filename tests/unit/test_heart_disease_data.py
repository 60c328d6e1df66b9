"""The bundled FLamby Fed-Heart-Disease data and its per-site split."""

from __future__ import annotations

import hashlib
import pathlib

import numpy as np
import pytest
import torch

from examples.heart_disease import task as heart_task
from quorum.data import heart_disease as hd
from quorum.errors import TaskError
from quorum.task import FederatedTask, HasBaselines, load_task

SIZES = {"cleveland": (199, 104), "hungarian": (172, 89), "switzerland": (30, 16), "va": (85, 45)}

# sha256 of the sorted test-row indices (comma-joined) that scikit-learn 1.9.1 gives for FLamby's
# call: train_test_split(np.arange(n), train_size=0.66, test_size=1 - 0.66, random_state=43,
# shuffle=True, stratify=labels or None) on each file's complete rows.
TEST_INDEX_SHA256 = {
    "cleveland": "08c0b33f49ba9ad42ab4c2298b9916797c2a2a134cd5d7a79977a9858ca390cb",
    "hungarian": "d81ef5d37e718e4ab5761753ae20b8ae6a58fc6ccb1feb1f55e99bcab1ffb1aa",
    "switzerland": "1505b4ca360a04d93bcf96766cdaccfe77b70dce807fa0b5f4416ac2de020a6e",
    "va": "702a8cd1632233733d0bed8e25c969b08c1de91d4b9fea33eab5f360b6d3aabc",
}

SHARED = pathlib.Path(__file__).resolve().parents[2].parent / "shared" / "data" / "heart_disease"
BUNDLED_FILES = [f"processed.{site}.data" for site in hd.SITES] + ["heart-disease.names"]

GOOD_ROW = "63.0,1.0,1.0,145.0,233.0,1.0,2.0,150.0,0.0,2.3,3.0,0.0,6.0,0"


@pytest.mark.parametrize("site", hd.SITES)
def test_split_sizes_and_shapes(site: str) -> None:
    split = hd.load_site(site)
    n_train, n_test = SIZES[site]
    assert split.x_train.shape == (n_train, 13)
    assert split.x_test.shape == (n_test, 13)
    assert split.y_train.shape == (n_train,)
    assert split.y_test.shape == (n_test,)
    for array in (split.x_train, split.y_train, split.x_test, split.y_test):
        assert array.dtype == np.float32
        assert np.isfinite(array).all()
    assert set(np.unique(np.concatenate([split.y_train, split.y_test]))) <= {0.0, 1.0}
    assert len(hd.FEATURES) == hd.NUM_FEATURES == 13


@pytest.mark.parametrize("site", hd.SITES)
def test_split_is_sklearns(site: str) -> None:
    _, labels = hd.read_rows(hd.bundled_path(site))
    train, test = hd.flamby_split(labels)
    joined = ",".join(str(i) for i in test.tolist())
    assert hashlib.sha256(joined.encode()).hexdigest() == TEST_INDEX_SHA256[site]
    assert sorted(train.tolist() + test.tolist()) == list(range(len(labels)))


def test_stratified_except_switzerland() -> None:
    for site in ("cleveland", "hungarian", "va"):
        split = hd.split_site(site)
        overall = np.concatenate([split.y_train, split.y_test]).mean()
        assert abs(split.y_train.mean() - overall) < 0.01
        assert abs(split.y_test.mean() - overall) < 0.02
    _, labels = hd.read_rows(hd.bundled_path("switzerland"))
    assert (labels == 0).sum() <= 2  # too few negatives to stratify


@pytest.mark.parametrize("site", hd.SITES)
def test_train_is_standardised(site: str) -> None:
    split = hd.load_site(site)
    np.testing.assert_allclose(split.x_train.mean(axis=0), 0.0, atol=1e-5)
    std = split.x_train.std(axis=0, ddof=1)
    constant = std < 1e-6  # e.g. chol, always 0 in switzerland
    np.testing.assert_allclose(std[~constant], 1.0, atol=1e-4)
    assert (split.x_train[:, constant] == 0).all()


def test_one_hot_columns_are_the_same_at_every_site() -> None:
    # the 13 columns are fixed by the levels, not by what a site's file happens to contain
    raw = {site: hd.split_site(site) for site in hd.SITES}
    for split in raw.values():
        dummies = np.concatenate([split.x_train, split.x_test])[:, 8:]
        assert set(np.unique(dummies)) <= {0.0, 1.0}
        assert (dummies[:, :3].sum(axis=1) <= 1).all()  # cp_2, cp_3, cp_4
        assert (dummies[:, 3:].sum(axis=1) <= 1).all()  # restecg_1, restecg_2
    first = np.concatenate([raw["cleveland"].x_train, raw["cleveland"].x_test])[0]
    # 63,1,cp=1,145,233,fbs=1,restecg=2,150,0,2.3
    np.testing.assert_allclose(first, [63, 1, 145, 233, 1, 150, 0, 2.3, 0, 0, 0, 0, 1], rtol=1e-6)


def test_pooled_standardisation_uses_pooled_train_statistics() -> None:
    pooled = hd.standardise(hd.pool(hd.split_site(site) for site in hd.SITES))
    assert pooled.x_train.shape == (486, 13)
    assert pooled.x_test.shape == (254, 13)
    np.testing.assert_allclose(pooled.x_train.mean(axis=0), 0.0, atol=1e-5)


def test_bare_name_and_path_agree(tmp_path: pathlib.Path) -> None:
    copy = tmp_path / "processed.va.data"
    copy.write_bytes(hd.bundled_path("va").read_bytes())
    a, b = hd.load_site("va"), hd.load_site(str(copy))
    np.testing.assert_array_equal(a.x_train, b.x_train)
    np.testing.assert_array_equal(a.y_test, b.y_test)


def test_bundled_files_are_byte_identical() -> None:
    folder = hd.bundled_path("va").parent
    for name in BUNDLED_FILES:
        assert (folder / name).is_file()
    assert (folder / "PROVENANCE.md").is_file()
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} is not there to compare with")
    for name in BUNDLED_FILES:
        assert (folder / name).read_bytes() == (SHARED / name).read_bytes(), name


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("1,2,3\n", "14"),
        (GOOD_ROW + "\n" + GOOD_ROW.replace("145.0", "abc") + "\n", "neither a number"),
        (GOOD_ROW.replace("1.0,1.0,145.0", "1.0,7.0,145.0") + "\n", "'cp'"),
        ("", "no complete rows"),
        ("?,?,?,?,?,?,?,?,?,?,?,?,?,?\n", "no complete rows"),
        (GOOD_ROW + "\n", "too few"),
    ],
)
def test_malformed_file_raises_task_error(
    tmp_path: pathlib.Path, content: str, message: str
) -> None:
    path = tmp_path / "processed.bad.data"
    path.write_text(content)
    with pytest.raises(TaskError, match=message):
        hd.load_site(path)


def test_unreadable_file_raises_task_error(tmp_path: pathlib.Path) -> None:
    with pytest.raises(TaskError, match="cannot read"):
        hd.load_site(tmp_path / "missing.data")
    with pytest.raises(TaskError, match=r"cannot read.*cleveland"):
        hd.load_site("atlantis")
    with pytest.raises(TaskError, match="unknown heart-disease site"):
        hd.bundled_path("atlantis")


def test_example_task_trains_a_site() -> None:
    task = load_task("examples.heart_disease.task:task")
    assert isinstance(task, FederatedTask)
    assert isinstance(task, HasBaselines)
    params = task.initial_parameters(42)
    assert {k: v.shape for k, v in params.items()} == {"weight": (1, 13), "bias": (1,)}
    np.testing.assert_array_equal(params["weight"], task.initial_parameters(42)["weight"])
    site = task.site("cleveland", "cpu", 42)
    before = site.evaluate(params, {})
    assert before.num_examples == 104
    fit = site.fit(params, {"lr": 0.01, "local_steps": 100})
    assert fit.num_examples == 199
    after = site.evaluate(fit.params, {})
    assert after.metrics["loss"] < before.metrics["loss"]
    assert after.metrics["accuracy"] > 0.6


def test_example_baselines_report_every_site(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(heart_task, "BASELINE_EPOCHS", 1)
    sites = {site: site for site in hd.SITES}
    state = torch.random.get_rng_state()
    baselines = heart_task.task.baselines(sites, "cpu", 42)
    assert torch.equal(state, torch.random.get_rng_state())  # global RNG untouched
    assert set(baselines.pooled) == {"accuracy_mean_sites", "accuracy_pooled_test"}
    assert set(baselines.local) == set(hd.SITES)
    for metrics in baselines.local.values():
        assert set(metrics) == {"accuracy_own_test", "accuracy_mean_sites", "accuracy_pooled_test"}
        assert all(0.0 <= v <= 1.0 for v in metrics.values())
    again = heart_task.task.baselines(sites, "cpu", 42)
    assert again == baselines


@pytest.mark.slow
def test_pooled_baseline_matches_flambys_published_result() -> None:
    # FLamby, 5 seeds: pooled training scores 0.735 (mean of the 4 site test sets) and 0.795
    # (pooled test set); seed 42 here gives 0.734 and 0.791 (about 2 s, 6,100 Adam steps).
    pooled = heart_task.task.pooled_baseline({site: site for site in hd.SITES}, "cpu", 42)
    assert pooled["accuracy_mean_sites"] == pytest.approx(0.735, abs=0.02)
    assert pooled["accuracy_pooled_test"] == pytest.approx(0.795, abs=0.02)
