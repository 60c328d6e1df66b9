"""BaselineSpec's rules, the torchrun argv, and the llm-extra guard."""

from __future__ import annotations

import sys

import pytest

from quorum.baseline import launcher
from quorum.baseline.extra import missing_packages, require_llm_extra
from quorum.baseline.spec import BaselineSpec, parse_spec
from quorum.errors import BaselineError, ConfigError


def test_defaults_bound_the_job_by_200_steps() -> None:
    spec = parse_spec({"task": "examples.shakespeare.task:task"})
    assert (spec.engine, spec.steps, spec.epochs, spec.nproc) == ("ddp", 200, None, 1)
    assert parse_spec({"task": "a:b", "epochs": 2}).steps is None


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"zero_stage": 2}, "zero_stage is a DeepSpeed setting"),
        ({"offload": "cpu"}, "offload is a DeepSpeed setting"),
        ({"engine": "deepspeed", "offload": "cpu"}, "needs ZeRO stage 1, 2 or 3"),
        ({"tensor_parallel": 2, "nproc": 2}, "tensor_parallel is a Megatron setting"),
        ({"engine": "megatron", "tensor_parallel": 2, "nproc": 3}, "must divide nproc"),
        ({"steps": 3, "epochs": 1}, "not both"),
        ({"nproc": 2, "batch_size": 3}, "multiple of the data-parallel size"),
        ({"torchrun_args": ["--nproc-per-node=4"]}, "use nproc"),
        ({"task": "no-colon"}, "module:attribute"),
        ({"zero_stage": 4, "engine": "deepspeed"}, "zero_stage"),
        ({"surprise": 1}, "surprise"),
    ],
)
def test_bad_specs_are_refused_with_the_reason(settings: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_spec({"task": "a:b", **settings})


def test_command_runs_the_worker_under_torchrun_on_a_local_port(tmp_path: object) -> None:
    spec = BaselineSpec(task="a:b", nproc=2)
    argv = launcher.command(spec, "/jobs/1")
    assert argv[:3] == [sys.executable, "-m", "torch.distributed.run"]
    assert argv[argv.index("--nproc-per-node") + 1] == "2"
    assert argv[argv.index("--master-addr") + 1] == "127.0.0.1"
    assert argv[-6:] == [
        "-m",
        "quorum.baseline.worker",
        "--spec",
        "/jobs/1/spec.json",
        "--out",
        "/jobs/1",
    ]


def test_rendezvous_flags_are_passed_through_instead_of_the_local_one() -> None:
    flags = ["--nnodes", "2", "--rdzv-backend", "c10d", "--rdzv-endpoint", "head:29400"]
    argv = launcher.command(BaselineSpec(task="a:b", torchrun_args=flags), "/j")
    assert "--master-addr" not in argv
    assert argv[argv.index("--nnodes") : argv.index("--nnodes") + 6] == flags


def test_missing_extra_names_the_pip_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "deepspeed", None)
    assert missing_packages("deepspeed") == ["deepspeed"]
    with pytest.raises(BaselineError, match=r"pip install 'quorum-fl\[llm\]'"):
        require_llm_extra("deepspeed")
    require_llm_extra("ddp")  # plain torch needs nothing more


def test_progress_reader_leaves_a_partial_line(tmp_path: object) -> None:
    import pathlib

    out = pathlib.Path(str(tmp_path))
    (out / launcher.PROGRESS_FILE).write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "lo')
    assert launcher.read_progress(out) == [{"step": 1, "loss": 2.0}]
    assert launcher.read_result(out) is None
