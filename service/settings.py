"""All service settings, read once from LATENT_CNF_* environment variables."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from latent_cnf.config import DEFAULT_MAX_NFE, DEFAULT_SOLVER, MAX_STEPS, MAX_TOLERANCE, MIN_TOLERANCE, SolverMethod

from .repository import VersionPolicy


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LATENT_CNF_", frozen=True)

    device: str = Field("auto", description="auto (cuda if available, else cpu), cpu, cuda, cuda:1, ...")
    models: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="comma-separated models of the repository (or model folders anywhere) to load at start-up; "
        "empty = every model of the repository",
    )
    model_repository: Path | None = Field(
        None,
        description="a folder of models, <name>/<version>/ each a model folder (or <name>/ itself: version 1); "
        "unset = the shipped models",
    )
    version_policy: VersionPolicy = Field(
        "latest", description="versions of a model served: latest (the highest number) or all"
    )
    repository_poll_s: float | None = Field(
        None,
        gt=0,
        description="watch the repository: every this many seconds, load new versions and unload models gone "
        "from disk (unset: only load and unload calls change what is served)",
    )
    control_token: SecretStr | None = Field(
        None,
        description="bearer token the repository's load and unload calls must carry (unset: no check; expose "
        "them only to operators)",
    )
    default_model: str = Field("mnist-final-cond", description="model used when a request names none")
    max_batch: int = Field(256, ge=1, description="most samples merged into one sampling call")
    max_score_rows: int = Field(
        4096, ge=1, description="most latent rows (images x K x labels) in one scoring call; at least one image"
    )
    max_call_cost: int = Field(
        2_000_000,
        ge=1,
        description="work units (latent rows x function evaluations; see service/cost.py) in one model call: "
        "a larger request runs in parts between others' calls (2,000,000 is about 0.3 s on 2 CPU cores)",
    )
    max_request_cost: int = Field(
        32_000_000, ge=1, description="work units one request may cost; above this it gets 422 (about 5 s on 2 cores)"
    )
    max_wait_ms: float = Field(
        0.0,
        ge=0,
        description="how long a call waits for more requests to merge before it runs (0: never; what arrives "
        "while a call runs forms the next call)",
    )
    max_queue: int = Field(64, ge=1, description="queued requests before new ones get 503")
    timeout_s: float = Field(30.0, gt=0, description="a request waiting longer gets 504")
    max_upload_bytes: int = Field(5_000_000, ge=1, description="request bodies above this get 413")
    max_files: int = Field(16, ge=1, description="images per /score request")
    max_image_pixels: int = Field(16_777_216, ge=1, description="decoded images above this many pixels get 413")
    max_request_pixels: int = Field(
        16_777_216, ge=1, description="a /score request whose images have more pixels in all gets 413"
    )
    max_concurrent_decodes: int = Field(
        2, ge=1, description="images decoded at once over all requests; each holds up to 16 bytes per pixel (WebP)"
    )
    solver_method: SolverMethod | None = Field(
        None, description="sampling solver when a request names none (default: each checkpoint's calibrated one)"
    )
    solver_steps: int | None = Field(
        None, ge=1, le=MAX_STEPS, description="steps of a fixed-step sampling solver (default: the checkpoint's)"
    )
    solver_rtol: float | None = Field(
        None,
        ge=MIN_TOLERANCE,
        le=MAX_TOLERANCE,
        description=f"dopri5 relative tolerance (default: the checkpoint's, else {DEFAULT_SOLVER.rtol:g})",
    )
    solver_atol: float | None = Field(
        None,
        ge=MIN_TOLERANCE,
        le=MAX_TOLERANCE,
        description=f"dopri5 absolute tolerance (default: the checkpoint's, else {DEFAULT_SOLVER.atol:g})",
    )
    exact_scores: bool = Field(
        False,
        description=f"score with {DEFAULT_SOLVER.method} at the tolerances above instead of the checkpoint's "
        "calibrated solver",
    )
    max_nfe: int = Field(DEFAULT_MAX_NFE, ge=1, description="a solve needing more function evaluations fails with 422")
    threads: int | None = Field(
        None,
        ge=1,
        description="torch CPU threads of the model calls (default: one per core, less one for the server "
        "process when the calls run in a child process)",
    )
    model_process: bool = Field(
        True,
        description="run model calls in a child process, which then holds the device: the HTTP event loop and "
        "the model never wait for each other's GIL (false: in a thread of the server process)",
    )
    warmup: bool = Field(True, description="run one sample and one score per model before reporting ready")
    max_connections: int | None = Field(
        None,
        ge=1,
        description="open connections before a new one closes the one waiting longest on its client "
        "(default: the open-file limit minus a reserve)",
    )
    header_timeout_s: float = Field(10.0, gt=0, description="a request head not complete by then is closed")
    body_timeout_s: float = Field(
        60.0, gt=0, description="a request body not complete this long after its head gets 408 and is closed"
    )
    send_timeout_s: float = Field(
        60.0,
        gt=0,
        description="an answer must drain to its client within this once over 64 KiB of it waits unsent, "
        "else the connection is closed",
    )
    keep_alive_s: float = Field(30.0, gt=0, description="an idle connection between requests is closed after this")
    log_format: Literal["text", "json"] = Field(
        "text", description="text lines, or one JSON object per line; both carry the request ID"
    )
    access_log: bool = Field(True, description="one log line per request (uvicorn's access log)")
    otlp_endpoint: str | None = Field(
        None,
        description="OTLP/HTTP traces endpoint (e.g. http://collector:4318/v1/traces); unset = no tracing",
    )

    @field_validator("models", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value


# The settings by what they govern: the order of docs/settings.md's table and of `python -m service --help`.
GROUPS: dict[str, tuple[str, ...]] = {
    "Models": (
        "device",
        "models",
        "model_repository",
        "version_policy",
        "repository_poll_s",
        "control_token",
        "default_model",
    ),
    "Solvers": ("solver_method", "solver_steps", "solver_rtol", "solver_atol", "exact_scores", "max_nfe"),
    "Model calls: size, merging, queue": (
        "max_batch",
        "max_score_rows",
        "max_call_cost",
        "max_request_cost",
        "max_wait_ms",
        "max_queue",
        "timeout_s",
    ),
    "Uploads": ("max_upload_bytes", "max_files", "max_image_pixels", "max_request_pixels", "max_concurrent_decodes"),
    "Process": ("threads", "model_process", "warmup"),
    "Connections": ("max_connections", "header_timeout_s", "body_timeout_s", "send_timeout_s", "keep_alive_s"),
    "Logs and traces": ("log_format", "access_log", "otlp_endpoint"),
}


@lru_cache
def get_settings() -> Settings:
    return Settings()
