"""All service settings, read once from LATENT_CNF_* environment variables."""

from __future__ import annotations

from functools import lru_cache
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from latent_cnf.config import SolverConfig


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LATENT_CNF_", frozen=True)

    device: str = Field("auto", description="auto (cuda if available, else cpu), cpu, cuda, cuda:1, ...")
    models: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="comma-separated checkpoint names or paths; empty = all shipped"
    )
    default_model: str = Field("mnist-final-cond", description="model used when a request names none")
    max_batch: int = Field(256, ge=1, description="most samples merged into one sampling call")
    max_score_rows: int = Field(
        4096, ge=1, description="most latent rows (images x K x labels) merged into one scoring call"
    )
    max_wait_ms: float = Field(5.0, ge=0, description="how long the batcher waits for more requests")
    max_queue: int = Field(64, ge=1, description="queued requests before new ones get 503")
    timeout_s: float = Field(30.0, gt=0, description="a request waiting longer gets 504")
    max_upload_bytes: int = Field(5_000_000, ge=1, description="request bodies above this get 413")
    max_files: int = Field(16, ge=1, description="images per /score request")
    max_image_pixels: int = Field(16_777_216, ge=1, description="decoded images above this many pixels get 413")
    ood_percentile: float = Field(
        1.0, ge=0, le=100, description="score percentile below which an image is called out of distribution"
    )
    solver_method: Literal["dopri5", "rk4", "midpoint", "euler"] = Field(
        "rk4", description="ODE solver when a request names none (see the README for the accuracy trade-off)"
    )
    solver_steps: int = Field(32, ge=1, le=1000, description="steps of a fixed-step default solver")
    solver_rtol: float = Field(1e-5, ge=1e-8, le=1e-1, description="dopri5 relative tolerance (also for /score)")
    solver_atol: float = Field(1e-5, ge=1e-8, le=1e-1, description="dopri5 absolute tolerance (also for /score)")
    max_nfe: int = Field(10_000, ge=1, description="a solve needing more function evaluations fails with 422")
    threads: int | None = Field(None, ge=1, description="torch CPU threads (default: torch's choice)")
    warmup: bool = Field(True, description="run one sample and one score per model before reporting ready")

    @property
    def default_solver(self) -> SolverConfig:
        return SolverConfig(
            method=self.solver_method,
            steps=self.solver_steps,
            rtol=self.solver_rtol,
            atol=self.solver_atol,
            max_nfe=self.max_nfe,
        )

    @property
    def score_solver(self) -> SolverConfig:
        """Scores need the exact density, so they always use the adaptive solver."""
        return SolverConfig(method="dopri5", rtol=self.solver_rtol, atol=self.solver_atol, max_nfe=self.max_nfe)

    @field_validator("models", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value


@lru_cache
def get_settings() -> Settings:
    return Settings()
