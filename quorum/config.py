"""Configuration: pydantic models for the server, runs, site agents and simulations.

Files are TOML. `--set section.key=value` overrides any value before validation; the key must
exist in the schema (unknown keys and ill-typed values are errors that name the key). Values are
read as TOML literals (`15`, `0.01`, `true`, `"x"`, `[1, 2]`); anything that is not a TOML literal
is taken as a plain string, so `--set run.strategy=fedyogi` works unquoted.
"""

from __future__ import annotations

import json
import math
import pathlib
import tomllib
from collections.abc import Iterable, Mapping
from typing import Any, Literal, TypeVar, get_args, get_origin

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from quorum.aggregation.robust import ROBUST_RULES, RobustRule
from quorum.aggregation.strategies import Strategy, make_strategy
from quorum.errors import ConfigError
from quorum.fitconfig import FitConfig
from quorum.wire.codecs import CompressionConfig

StrategyName = Literal[
    "fedavg",
    "fedprox",
    "fedadam",
    "fedyogi",
    "fedadagrad",
    "fedmedian",
    "fedtrimmedavg",
    "krum",
    "multikrum",
    "bulyan",
]


MAX_SITE_CONFIG_BYTES = 1024 * 1024
"""`site_config` travels in every task offer, a message of the session stream (8 MiB at most)."""


class _Model(BaseModel):
    # Infinities and NaN are refused everywhere (a file, --set, the API): JSON cannot carry
    # them, so a config that held one would not read back from the store as it was written.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class SecAggConfig(_Model):
    """SecAgg+ for the run's fit rounds (DESIGN section 6): the server learns only the sum."""

    enabled: bool = False
    threshold: int | float = Field(
        2 / 3,
        gt=0,
        description=(
            "shares needed to rebuild any one site's secrets: an integer, or a fraction of each "
            "neighbourhood (site + its neighbours; the whole cohort when the graph is complete); "
            "always more than half of the neighbourhood"
        ),
    )
    neighbours: int = Field(
        16, ge=1, description="k of the sparse SecAgg+ graph; the complete graph when cohort <= k+1"
    )
    clip_range: float = Field(
        8.0, gt=0, description="each update element (times its weight share) is clipped to ±this"
    )
    quantization_bits: int = Field(20, ge=4, le=30)
    max_weight: int = Field(
        1000, ge=1, description="num_examples above this count as this much (weights are masked)"
    )
    stage_timeout_s: float = Field(
        30.0, gt=0, description="deadline of the key, share and unmask stages"
    )

    @model_validator(mode="after")
    def _check_threshold(self) -> SecAggConfig:
        if isinstance(self.threshold, float) and not 0.5 < self.threshold <= 1:
            raise ValueError(
                "a fractional threshold must be above 0.5 (a majority of each neighbourhood) "
                "and at most 1"
            )
        if isinstance(self.threshold, int) and self.threshold < 2:
            raise ValueError(
                "threshold must be at least 2: with one share the server could unmask one site"
            )
        return self


class CentralDPConfig(_Model):
    """Central (user-level) DP-FedAvg: every site's update is clipped in L2 and the sum gets
    Gaussian noise (McMahan et al. 2018), optionally with adaptive quantile clipping (Andrew et
    al. 2021). Under secure aggregation the sites clip and add their share of the noise
    themselves (distributed DP), so the guarantee does not rest on the server seeing updates."""

    enabled: bool = False
    noise_multiplier: float = Field(
        1.0, gt=0, description="z: noise standard deviation on the sum = z * clipping_norm"
    )
    clipping_norm: float = Field(
        1.0, gt=0, description="L2 bound of each site's update (the initial one when adaptive)"
    )
    adaptive: bool = Field(False, description="adapt the clipping norm to target_quantile")
    target_quantile: float = Field(
        0.5, gt=0, lt=1, description="fraction of updates meant to be left unclipped"
    )
    clip_learning_rate: float = Field(0.2, gt=0, description="η of the geometric norm update")
    clipped_count_stddev: float | None = Field(
        None,
        gt=0,
        description=(
            "noise on the count of unclipped updates; default max(cohort / 20, noise_multiplier)"
        ),
    )
    delta: float = Field(1e-5, gt=0, lt=1, description="δ of the reported user-level ε")
    accountant: Literal["rdp", "prv"] = "rdp"

    @model_validator(mode="after")
    def _check_count_noise(self) -> CentralDPConfig:
        stddev = self.clipped_count_stddev
        if self.adaptive and stddev is not None and 2 * stddev <= self.noise_multiplier:
            raise ValueError(
                "clipped_count_stddev must exceed noise_multiplier / 2: the clipped count "
                "would spend the whole privacy budget of the round"
            )
        return self


class RunConfig(_Model):
    """One training job (DESIGN section 5). `sync`: select a cohort, fit, fold, step, evaluate,
    checkpoint. `async` (FedBuff): sites train whenever they are free and every `buffer_size`
    accepted updates make one server step (a round). `gossip`: no global model; each round
    every site trains, exchanges its model with its neighbours end-to-end encrypted through the
    server's relay, and mixes."""

    name: str = "run"
    task: str = Field(description="module:attribute of the FederatedTask, installed everywhere")
    mode: Literal["sync", "async", "gossip"] = "sync"
    strategy: StrategyName = "fedavg"
    rounds: int = Field(10, ge=1)
    seed: int = 0
    server_learning_rate: float = Field(1.0, gt=0)
    beta1: float = Field(0.9, ge=0, lt=1)
    beta2: float = Field(0.99, ge=0, lt=1)
    tau: float = Field(1e-3, gt=0)
    proximal_mu: float = Field(0.0, ge=0)
    # ---- Byzantine-robust aggregation (sync, without secagg or central DP) ----
    beta: float = Field(
        0.2, ge=0, lt=0.5, description="fedtrimmedavg: fraction trimmed at each end, per value"
    )
    num_malicious_nodes: int = Field(
        0, ge=0, description="krum, multikrum, bulyan: f, the hostile sites the rule withstands"
    )
    num_nodes_to_select: int = Field(
        0, ge=0, description="multikrum: m, the updates averaged (0: n - f)"
    )
    norm_bound: float | None = Field(
        None,
        gt=0,
        description="clip every update (relative to the global model) to this L2 norm before "
        "the mean or the robust rule",
    )
    robust_memory_mb: float = Field(
        2048.0,
        gt=0,
        description="robust strategies keep every update of a round (max_fit_sites × "
        "parameters × 4 bytes): a run needing more is refused",
    )
    fraction_fit: float = Field(1.0, gt=0, le=1)
    min_fit_sites: int = Field(1, ge=1)
    max_fit_sites: int | None = Field(None, ge=1)
    fraction_evaluate: float = Field(1.0, ge=0, le=1)
    min_available_sites: int = Field(1, ge=1, description="sites connected before a round starts")
    wait_timeout_s: float = Field(600.0, gt=0, description="how long a round waits for sites")
    round_timeout_s: float = Field(300.0, gt=0, description="deadline for fit results")
    evaluate_timeout_s: float = Field(120.0, gt=0)
    max_num_examples: int = Field(100_000_000, ge=1, le=2**53)  # a float64 weight, exactly
    site_config: dict[str, Any] = Field(
        default_factory=dict, description="settings sent to every site with each task"
    )
    secagg: SecAggConfig = Field(default_factory=SecAggConfig)
    compression: CompressionConfig = Field(default_factory=CompressionConfig)
    central_dp: CentralDPConfig = Field(default_factory=CentralDPConfig)
    # ---- async (FedBuff); `rounds` counts server steps ----
    buffer_size: int = Field(
        3, ge=1, description="K: accepted updates per server step (under SecAgg, the cohort size)"
    )
    max_concurrency: int | None = Field(
        None, ge=1, description="sites training at once (default: every connected site)"
    )
    staleness_exponent: float = Field(0.5, ge=0, description="α of the weight (1 + τ)^-α")
    max_staleness: int = Field(
        10, ge=0, description="updates whose base model is more versions old are dropped"
    )
    server_momentum: float = Field(0.0, ge=0, lt=1, description="β of the FedBuff server step")
    max_wall_time_s: float | None = Field(
        None, gt=0, description="async: stop after this long, whatever `rounds` says"
    )
    # ---- gossip ----
    topology: Literal["ring", "exponential", "random-regular"] = "exponential"
    degree: int = Field(2, ge=1, description="k of the random-regular topology")
    gossip_stage_timeout_s: float = Field(
        30.0,
        gt=0,
        description="gossip: how long the key and mix stages wait for the sites (the send "
        "stage, which covers training, has round_timeout_s)",
    )
    gossip_lr_decay: float = Field(
        1.0,
        gt=0,
        le=1,
        description="gossip: the sites' lr (site_config.lr) is multiplied by this every round; "
        "with a constant lr the neighbours' models stay apart by their local drift",
    )

    @model_validator(mode="after")
    def _fits_the_wire(self) -> RunConfig:
        """A run is stored as JSON and its site_config sent with every task: finite numbers,
        UTF-8 text and a bounded size, or the store could not give it back and a task offer
        could not carry it."""
        try:
            site_config = json.dumps(self.site_config, allow_nan=False, ensure_ascii=False)
        except ValueError:
            raise ValueError(
                "site_config holds NaN or an infinity, which JSON cannot carry; use finite numbers"
            ) from None
        try:
            json.dumps(self.model_dump(mode="json"), ensure_ascii=False).encode()
            size = len(site_config.encode())
        except UnicodeEncodeError:
            raise ValueError(
                "the run holds text that is not valid UTF-8 (an unpaired surrogate)"
            ) from None
        if size > MAX_SITE_CONFIG_BYTES:
            raise ValueError(
                f"site_config is {size:,} bytes; at most {MAX_SITE_CONFIG_BYTES:,} travel with "
                "each task (ship large data to the sites another way)"
            )
        return self

    @field_validator("site_config")
    @classmethod
    def _fits_quorum_entries(cls, site_config: dict[str, Any]) -> dict[str, Any]:
        FitConfig.check_settings(site_config)
        return site_config

    def _check_compression(self) -> None:
        codec = self.compression.upload
        if codec != "none" and self.secagg.enabled:
            raise ValueError(
                f"compression.upload = {codec!r} does not combine with secure aggregation: SecAgg "
                "already quantises the updates, and the server cannot decode masked vectors; "
                "set compression.upload = 'none' or secagg.enabled = false"
            )
        if codec != "none" and self.mode == "gossip":
            raise ValueError(
                f"compression.upload = {codec!r} applies to updates sent to the server; gossip "
                "runs exchange whole models between sites: set compression.upload = 'none'"
            )

    @model_validator(mode="after")
    def _check_cohort(self) -> RunConfig:
        if self.max_fit_sites is not None and self.max_fit_sites < self.min_fit_sites:
            raise ValueError("max_fit_sites is below min_fit_sites")
        if self.min_available_sites < self.min_fit_sites:
            self.__dict__["min_available_sites"] = self.min_fit_sites
        self._check_robust()
        self._check_compression()
        if self.mode != "sync" and self.strategy not in ("fedavg", "fedprox"):
            raise ValueError(
                f"strategy {self.strategy!r} is a sync server optimiser; {self.mode} runs take "
                "fedavg or fedprox (async steps with server_learning_rate and server_momentum)"
            )
        if self.mode == "gossip" and (self.central_dp.enabled or self.secagg.enabled):
            raise ValueError(
                "gossip runs have no aggregate for central DP or secure aggregation to protect: "
                "each model travels end-to-end encrypted between two sites"
            )
        if self.mode == "async" and self.central_dp.enabled:
            if self.secagg.enabled:
                raise ValueError(
                    "async runs take central DP with the server adding the noise; distributed "
                    "DP under secure aggregation is sync only for now"
                )
            if self.central_dp.adaptive:
                raise ValueError(
                    "adaptive clipping is not available for async runs: set "
                    "central_dp.adaptive = false (a fixed clipping_norm)"
                )
            # a DP buffer takes K distinct sites: the run starts once it can fill one
            self.__dict__["min_available_sites"] = max(self.min_available_sites, self.buffer_size)
        if self.mode == "async" and self.secagg.enabled and self.buffer_size < 2:
            raise ValueError("async with secagg aggregates a cohort of buffer_size >= 2 sites")
        dp, secagg = self.central_dp, self.secagg
        if dp.enabled and dp.adaptive and secagg.enabled:
            raise ValueError(
                "adaptive clipping needs the count of unclipped updates, which secure "
                "aggregation hides; with secagg set central_dp.adaptive = false (a fixed "
                "clipping_norm)"
            )
        # Under SecAgg each site's clipped update plus its noise share (std z·C/√n, n >= 2) is
        # clipped again element by element to ±clip_range: that must not cut the noise.
        needed = dp.clipping_norm * (1 + 6 * dp.noise_multiplier / math.sqrt(2))
        if dp.enabled and secagg.enabled and secagg.clip_range < needed:
            raise ValueError(
                f"secagg.clip_range {secagg.clip_range:g} would clip the distributed DP noise: "
                f"with clipping_norm {dp.clipping_norm:g} and noise_multiplier "
                f"{dp.noise_multiplier:g} it must be at least {needed:.4g}"
            )
        return self

    @property
    def robust_rule(self) -> RobustRule:
        """How the sync rounds combine their updates: the plain mean or a robust rule."""
        return RobustRule(
            self.strategy if self.strategy in ROBUST_RULES else None,
            beta=self.beta,
            num_malicious_nodes=self.num_malicious_nodes,
            num_nodes_to_select=self.num_nodes_to_select,
            norm_bound=self.norm_bound,
        )

    def server_strategy(self) -> Strategy:
        """A fresh server strategy for the run (it keeps optimiser state, so one per driver);
        raises ConfigError for settings that do not fit it."""
        return make_strategy(
            self.strategy,
            server_learning_rate=self.server_learning_rate,
            beta1=self.beta1,
            beta2=self.beta2,
            tau=self.tau,
            proximal_mu=self.proximal_mu,
        )

    def _check_robust(self) -> None:
        robust = self.strategy in ROBUST_RULES
        what = f"strategy {self.strategy!r}" if robust else "norm_bound"
        if not robust and self.norm_bound is None:
            if self.num_malicious_nodes or self.num_nodes_to_select:
                raise ValueError(
                    "num_malicious_nodes and num_nodes_to_select apply to krum, multikrum and "
                    f"bulyan, not {self.strategy}"
                )
            return
        if self.secagg.enabled:
            raise ValueError(
                f"{what} needs each site's update, but under secure aggregation the server "
                "sees only their sum: disable secagg or choose fedavg without norm_bound"
            )
        if self.mode != "sync":
            raise ValueError(
                f"{what} combines every update of a round at once; "
                + (
                    "async runs step on a few buffered updates at a time"
                    if self.mode == "async"
                    else "gossip runs have no server aggregate (each site mixes its neighbours)"
                )
                + ": use mode = sync"
            )
        if self.central_dp.enabled:
            raise ValueError(
                f"{what} does not combine with central DP, which clips every update to "
                "central_dp.clipping_norm and noises their sum (its guarantee is for that sum)"
            )
        if not robust:
            return
        if self.max_fit_sites is None:
            raise ValueError(
                f"strategy {self.strategy!r} keeps every update of a round in memory: set "
                "max_fit_sites to bound the cohort (checked against robust_memory_mb)"
            )
        f, m = self.num_malicious_nodes, self.num_nodes_to_select
        if (f or m) and self.strategy in ("fedmedian", "fedtrimmedavg"):
            raise ValueError(
                f"num_malicious_nodes and num_nodes_to_select apply to krum, multikrum and "
                f"bulyan, not {self.strategy}"
            )
        if m and self.strategy != "multikrum":
            raise ValueError(f"num_nodes_to_select applies to multikrum, not {self.strategy}")
        least, why = self.robust_rule.minimum_updates()
        if self.max_fit_sites < least:
            raise ValueError(
                f"{why}, at least {least} updates a round; max_fit_sites is {self.max_fit_sites}"
            )


class ServerConfig(_Model):
    federation_address: str = "127.0.0.1:8600"
    admin_address: str = "127.0.0.1:8601"
    state_dir: pathlib.Path = pathlib.Path("quorum-state")
    tls_cert: pathlib.Path | None = None
    tls_key: pathlib.Path | None = None
    admin_token: str | None = Field(None, description="admin bearer token; generated if unset")
    admin_token_file: pathlib.Path | None = Field(
        None,
        description="read admin_token from this file (a mounted Kubernetes or compose secret, "
        "a systemd credential) instead of writing it in the config",
    )
    heartbeat_interval_s: float = Field(5.0, gt=0)
    session_timeout_s: float = Field(30.0, gt=0, description="silence that ends a session")
    server_id: str = "quorum"
    max_inflight_uploads: int = Field(2, ge=1, description="uploads received at once")
    max_inflight_upload_mb: int = Field(
        4096,
        ge=1,
        description="MB of uploads received at once (spooled to state_dir/uploads, not held "
        "in memory); one upload is always let in, however large",
    )
    max_inflight_downloads: int = Field(2, ge=1, description="model downloads streamed at once")
    transfer_idle_timeout_s: float = Field(
        120.0,
        gt=0,
        description="an upload or download that moves no chunk (2 MiB) for this long is ended, "
        "so that it gives its place among max_inflight_uploads / _downloads to the next",
    )
    stream_window_kb: int = Field(
        4096,
        ge=0,
        le=2_097_151,  # HTTP/2's largest window, 2^31 - 1 bytes
        description="what a site may send on a stream beyond the message the server is "
        "reading (KiB), at least 64: bounds what gRPC holds per upload, and with it an "
        "upload's speed over a link's round trip (about 75 MB/s at 50 ms with 4096); 0: sized "
        "by gRPC's bandwidth-delay probing, unbounded",
    )
    max_baseline_jobs: int = Field(
        1, ge=1, description="baseline jobs running at once; later ones wait, queued, in order"
    )
    keep_checkpoints: int = Field(
        3,
        ge=2,
        description="newest rounds whose checkpoints each run keeps (and its initial model); "
        "older ones are removed, so the state directory does not grow with rounds",
    )
    backup_every_s: float = Field(
        3600.0,
        ge=0,
        description="seconds between online backups of the state store (0: none)",
    )
    backup_dir: pathlib.Path | None = Field(
        None, description="where backups go (default: STATE_DIR/backups)"
    )
    keep_backups: int = Field(24, ge=1, description="newest backups kept; older ones removed")

    @field_validator("stream_window_kb")
    @classmethod
    def _fixed_window_or_probing(cls, kb: int) -> int:
        if 0 < kb < 64:
            raise ValueError("a fixed window is at least 64 KiB; 0 lets gRPC's probing size it")
        return kb

    @model_validator(mode="after")
    def _read_admin_token_file(self) -> ServerConfig:
        path = self.admin_token_file
        if path is None:
            return self
        try:
            token = path.read_text().strip()
        except OSError as exc:
            raise ValueError(f"cannot read admin_token_file {path}: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise ValueError(f"admin_token_file {path} is not UTF-8 text") from None
        if not token:
            raise ValueError(f"admin_token_file {path} is empty")
        # (Equal when this model is validated again, after an assignment.)
        if self.admin_token not in (None, token):
            raise ValueError("set admin_token or admin_token_file, not both")
        self.__dict__["admin_token"] = token  # assignment would validate (and read) again
        return self


class ServerFile(_Model):
    """The whole of server.toml: [server] and any number of [[runs]]."""

    server: ServerConfig = Field(default_factory=ServerConfig)
    runs: list[RunConfig] = Field(default_factory=list)


class SiteDPConfig(_Model):
    """A site's own differential-privacy budget for a run (DP-SGD with Opacus at the site)."""

    epsilon: float = Field(gt=0)
    delta: float = Field(1e-5, gt=0, lt=1)
    max_grad_norm: float = Field(1.0, gt=0, description="per-example gradient clipping norm")
    accountant: Literal["rdp", "prv"] = "rdp"


SITE_REQUIRED = ("server", "site_key", "task", "data")
"""The [client] settings a site agent cannot start without, from its config file or its flags."""


class ClientConfig(_Model):
    """[client] of a site config: the federation a site agent joins, as whom, and what it trains.

    Each setting is also a flag of `quorum client run` (`site_key` is `--site-key`)."""

    server: str = Field(description="HOST:PORT of the federation service")
    site_key: pathlib.Path = Field(description="this site's private key (`quorum site keygen`)")
    task: str = Field(description="module:attribute of the FederatedTask")
    data: str = Field(description="this site's data, passed to the task")
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N")
    insecure: bool = Field(False, description="plaintext gRPC (loopback only)")
    root_cert: pathlib.Path | None = Field(
        None, description="CA bundle for the server's TLS certificate (default: the system's)"
    )
    cache_dir: pathlib.Path | None = Field(None, description="keep downloaded models here")
    give_up_after_s: float | None = Field(
        None, gt=0, description="exit after this long without a session (default: keep trying)"
    )
    seed: int = 0
    log_format: Literal["text", "json"] = "text"
    flower_app: str | None = Field(
        None,
        description="module:attribute of a Flower ClientApp (or client_fn) that serves this "
        "site's fit and evaluate tasks in place of the task's own; `data` is then its "
        "node_config (`partition-id=0 num-partitions=2`)",
    )

    @model_validator(mode="before")
    @classmethod
    def _name_missing(cls, data: Any) -> Any:
        # One error that names every missing setting and both places to give it, where pydantic
        # would say "Field required" once per setting without saying that a flag would do.
        if isinstance(data, dict):
            missing = [key for key in SITE_REQUIRED if data.get(key) is None]
            if missing:
                raise PydanticCustomError(
                    "missing_site_settings",
                    "missing required setting(s) {settings}: set them in the [client] table of "
                    "the site config (--config) or pass {flags} to `quorum client run`",
                    {
                        "settings": ", ".join(f"client.{key}" for key in missing),
                        "flags": ", ".join(f"--{key.replace('_', '-')}" for key in missing),
                    },
                )
        return data


class ClientDPConfig(SiteDPConfig):
    """[dp] of a site config: this site's own budget, and where the agent keeps its ledger."""

    ledger: pathlib.Path | None = Field(
        None, description="the privacy ledger (default: beside the site key, KEY.privacy.json)"
    )

    @model_validator(mode="before")
    @classmethod
    def _needs_a_budget(cls, data: Any) -> Any:
        # Any DP setting (say --dp-delta alone) without ε asks for DP without its budget.
        if isinstance(data, dict) and data.get("epsilon") is None:
            raise PydanticCustomError(
                "missing_site_budget",
                "differential privacy needs this site's budget epsilon: set epsilon in the [dp] "
                "table of the site config or pass --dp-epsilon",
            )
        return data


class SiteFile(_Model):
    """The whole of a site.toml (`quorum client run --config`): [client], and [dp] when the site
    trains with DP-SGD under its own budget."""

    client: ClientConfig
    dp: ClientDPConfig | None = Field(None, description="this site's DP budget; none: no DP")

    @model_validator(mode="before")
    @classmethod
    def _client_table(cls, data: Any) -> Any:
        # No [client] at all (every setting given as a flag, or none): an empty table, so that
        # the error names the settings it lacks rather than the table.
        if isinstance(data, dict) and "client" not in data:
            return {**data, "client": {}}
        return data

    @property
    def ledger_path(self) -> pathlib.Path:
        """The site's privacy ledger: dp.ledger, else KEY.privacy.json beside the site key."""
        ledger = self.dp.ledger if self.dp is not None else None
        return ledger or self.client.site_key.with_suffix(".privacy.json")


class SimSite(_Model):
    name: str
    data: str | None = Field(
        None, description="this site's data (a generated site's own, when left out)"
    )
    dp: SiteDPConfig | None = Field(None, description="this site's budget (overrides [site.dp])")
    flower_app: str | None = Field(
        None,
        description="module:attribute of a Flower ClientApp serving this site in place of the "
        "task's site (`data` is then its node_config), as `quorum client run --flower-app`",
    )


class SimSiteDefaults(_Model):
    device: Literal["auto", "cpu", "cuda"] = "cpu"
    dp: SiteDPConfig | None = Field(None, description="every site's budget, unless it sets its own")


PartitionKind = Literal["natural", "iid", "dirichlet", "shards", "quantity"]


class PartitionConfig(_Model):
    """How `quorum sim` splits a Partitionable task's data set among its virtual sites."""

    kind: PartitionKind = Field(
        "iid",
        description="natural (the data's own owners: one site each), iid, dirichlet (label "
        "skew), shards (label shards per site) or quantity (power-law sizes)",
    )
    alpha: float = Field(0.5, gt=0, description="dirichlet: concentration; lower is more skewed")
    shards_per_site: int = Field(2, ge=1, description="shards: label-sorted shards per site")
    power: float = Field(1.5, gt=0, description="quantity: exponent of the power-law sizes")
    min_size: int = Field(1, ge=1, description="examples every site gets at least")
    seed: int | None = Field(None, description="default: the run's seed")


class SimOptions(_Model):
    seed: int | None = Field(None, description="overrides run.seed")
    timeout_s: float = Field(900.0, gt=0)
    output_dir: pathlib.Path = pathlib.Path("sim-output")
    baselines: bool = True
    baseline: dict[str, Any] = Field(
        default_factory=dict,
        description="settings of the pooled baseline job the server runs (a BaselineSpec table: "
        "engine, nproc, steps...); its task is the run's, data 'pooled', seed the run's, "
        "device the sites'",
    )
    num_sites: int | None = Field(
        None,
        ge=1,
        description="virtual sites site-0000, site-0001, ... (default: the [[sites]] listed); "
        "a [[sites]] entry of one of these names overrides that site",
    )
    data: str | None = Field(
        None, description="the data set the partitioner splits (the task's examples(data))"
    )
    site_data: str | None = Field(
        None,
        description="each generated site's data string, '{index}' replaced by its number, for "
        "tasks that take a site's data by name (instead of [sim.partition])",
    )
    partition: PartitionConfig | None = Field(
        None, description="split `data` among the sites (the task must be Partitionable)"
    )
    hosts: int | None = Field(
        None, ge=1, description="site-host processes (default: one per core, at most one per site)"
    )
    slots_per_host: int | None = Field(
        None,
        ge=1,
        description="fits and evaluations running at once in a host (default: its "
        "share of the cores, at least 1)",
    )
    backend: Literal["local", "ray"] = Field(
        "local", description="local: host processes on this machine; ray: Ray actors"
    )
    ray_address: str | None = Field(
        None, description="an existing Ray cluster (HOST:PORT); default: a local Ray instance"
    )
    host_num_cpus: float = Field(1.0, gt=0, description="ray: CPUs each host actor reserves")
    host_num_gpus: float = Field(
        0.0, ge=0, description="ray: GPUs (or a fraction of one) each host actor reserves"
    )
    tensorboard: pathlib.Path | None = Field(
        None, description="also write the rounds' scalars as TensorBoard event files here"
    )
    table_every: int | None = Field(
        None, ge=1, description="rounds between the rows of the printed table (default: ~20 rows)"
    )
    byzantine: list[str] = Field(
        default_factory=list,
        description="hostile sites, SITE_OR_FRACTION=ATTACK[:PARAM] each (0.2=signflip, "
        "site-0007=scale:10); attacks: signflip, scale, noise, labelflip, alie "
        "(quorum.sim.attacks)",
    )

    @model_validator(mode="after")
    def _check_sources(self) -> SimOptions:
        if self.partition is not None and self.data is None:
            raise ValueError("[sim.partition] splits the data set named by sim.data: set it")
        if self.partition is not None and self.site_data is not None:
            raise ValueError("sim.site_data and [sim.partition] are two ways to give sites data")
        if (
            (self.partition or self.site_data)
            and self.num_sites is None
            and (self.partition is None or self.partition.kind != "natural")
        ):
            raise ValueError("sim.num_sites says how many sites to generate")
        return self


class SimFile(_Model):
    """The whole of a sim.toml."""

    sim: SimOptions = Field(default_factory=SimOptions)
    server: ServerConfig = Field(default_factory=ServerConfig)
    run: RunConfig
    site: SimSiteDefaults = Field(default_factory=SimSiteDefaults)
    sites: list[SimSite] = Field(
        default_factory=list, description="sites by name; with sim.num_sites, overrides"
    )

    @model_validator(mode="after")
    def _some_sites(self) -> SimFile:
        generated = self.sim.num_sites is not None or (
            self.sim.partition is not None and self.sim.partition.kind == "natural"
        )
        if not self.sites and not generated:
            raise ValueError("a simulation needs sites: set sim.num_sites or list [[sites]]")
        names = [s.name for s in self.sites]
        if len(set(names)) != len(names):
            raise ValueError("[[sites]] names must be unique")
        return self


M = TypeVar("M", bound=BaseModel)


def parse_override(item: str) -> tuple[list[str], Any]:
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {item!r} is not of the form section.key=value")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key.strip().split("."), value


def _optional_inner(annotation: Any) -> Any:
    """`X | None` -> X, so that `--set site.dp.epsilon=1` reaches into an optional table."""
    args = [a for a in get_args(annotation) if a is not type(None)]
    if type(None) in get_args(annotation) and len(args) == 1:
        return args[0]
    return annotation


def _apply(model: type[BaseModel], data: dict[str, Any], path: list[str], value: Any) -> None:
    """Sets data[path] = value after checking every step of the path against the schema."""
    dotted = ".".join(path)
    node = data
    schema: Any = model
    for i, part in enumerate(path):
        if isinstance(schema, type) and issubclass(schema, BaseModel):
            field = schema.model_fields.get(part)
            if field is None:
                raise ConfigError(f"unknown config key {dotted!r} ({part!r} is not a setting)")
            schema = _optional_inner(field.annotation)
        elif schema is Any or get_origin(schema) is dict:
            schema = Any  # inside a free-form table such as run.site_config
        else:
            raise ConfigError(f"unknown config key {dotted!r} ({'.'.join(path[:i])} is a value)")
        if i == len(path) - 1:
            node[part] = value
        else:
            child = node.setdefault(part, {})
            if isinstance(child, list):
                raise ConfigError(f"config key {dotted!r} points into a list; edit the file")
            if not isinstance(child, dict):
                raise ConfigError(
                    f"config key {dotted!r}: {'.'.join(path[: i + 1])} is a value, not a table"
                )
            node = child


def load(
    model: type[M],
    path: pathlib.Path | None,
    overrides: Iterable[str] = (),
    values: Mapping[str, Any] | None = None,
) -> M:
    """Reads a TOML file (or starts empty), applies overrides, then `values` (typed settings by
    dotted key, such as a command's own flags, which win over both), and validates."""
    data = read_toml(path) if path is not None else {}
    for item in overrides:
        keys, value = parse_override(item)
        _apply(model, data, keys, value)
    for key, value in (values or {}).items():
        _apply(model, data, key.split("."), value)
    return validate(model, data, source=str(path) if path else "command line")


def read_toml(path: pathlib.Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config {path} is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config {path} is not valid TOML: {exc}") from None


def load_runs(path: pathlib.Path, overrides: Iterable[str] = ()) -> list[RunConfig]:
    """The runs of a TOML file (`quorum runs submit`): a bare run table, a sim config's [run] or
    a server config's [[runs]] (other tables are ignored); `--set key=value` overrides apply to
    each run (`--set rounds=5`)."""
    data = read_toml(path)
    if "runs" in data or "run" in data:
        tables = data.get("runs", [data.get("run")])
        if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
            raise ConfigError(f"config {path}: [run] or [[runs]] is not a table")
    elif {"server", "sim", "sites", "client"} & data.keys():
        raise ConfigError(
            f"config {path} has no run to submit: a server config's runs are its [[runs]] "
            "tables, a sim config's its [run] table"
        )
    else:
        tables = [data]
    if not tables:
        raise ConfigError(f"config {path} has an empty [[runs]]")
    runs = []
    for i, table in enumerate(tables):
        for item in overrides:
            keys, value = parse_override(item)
            _apply(RunConfig, table, keys, value)
        source = f"{path}, run {i + 1}" if len(tables) > 1 else str(path)
        runs.append(validate(RunConfig, table, source))
    return runs


def validate(model: type[M], data: Any, source: str) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(top level)'}: {err['msg']}"
            for err in exc.errors()
        )
        raise ConfigError(f"invalid config ({source}): {problems}") from None


def resolve_data(data: str, config_dir: pathlib.Path) -> str:
    """A relative path is read from the config's folder when it exists there; anything else
    (a bare name the task understands, an absolute path) goes to the task unchanged."""
    candidate = config_dir / data
    return (
        str(candidate.resolve())
        if not pathlib.Path(data).is_absolute() and candidate.exists()
        else data
    )


def load_site(
    path: pathlib.Path | None,
    overrides: Iterable[str] = (),
    flags: Mapping[str, Any] | None = None,
) -> SiteFile:
    """The settings of `quorum client run`: the site config at `path` (if any), its `--set`
    overrides, then the flags that were given (by dotted key; None: not given), which win.

    Relative paths in the file and its overrides are read from the file's folder, so that a site
    config works from any working directory; those of flags, from the working directory, as a
    shell user expects."""
    given = {key: value for key, value in (flags or {}).items() if value is not None}
    site = load(SiteFile, path, overrides, given)
    if path is None:
        return site
    base, client = path.parent, site.client

    def from_file(key: str, value: pathlib.Path) -> pathlib.Path:
        return value if key in given or value.is_absolute() else base / value

    client.site_key = from_file("client.site_key", client.site_key)
    if client.root_cert is not None:
        client.root_cert = from_file("client.root_cert", client.root_cert)
    if client.cache_dir is not None:
        client.cache_dir = from_file("client.cache_dir", client.cache_dir)
    if "client.data" not in given:
        client.data = resolve_data(client.data, base)
    if site.dp is not None and site.dp.ledger is not None:
        site.dp.ledger = from_file("dp.ledger", site.dp.ledger)
    return site
