"""Request and response models of the rollouts admin API (docs/rollouts.md)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from owner.rollouts import Policy, PolicyError

_SELECTOR = r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,62}=.{0,256}$"


class RolloutOptions(BaseModel):
    """A rollout's options (``owner.rollouts.Policy``); also a group's rollout policy."""

    model_config = ConfigDict(extra="forbid")

    batch_size: int | None = Field(default=None, ge=1, le=1_000_000)
    batch_percent: float | None = Field(default=None, gt=0, le=100)
    canary: str | None = Field(default=None, pattern=_SELECTOR)
    canary_size: int = Field(default=1, ge=1, le=1_000_000)
    success_threshold: float = Field(default=100.0, ge=0, le=100)
    rollback_threshold: float | None = Field(default=None, ge=0, le=100)
    report_timeout: int = Field(default=1800, ge=1, le=30 * 24 * 3600)
    hold: list[str] = Field(default_factory=list, max_length=100)
    max_unavailable: int | None = Field(default=None, ge=1, le=1_000_000)
    max_unavailable_percent: float | None = Field(default=None, gt=0, le=100)
    budget_label: str | None = Field(default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,62}$")
    window: str | None = Field(default=None, max_length=64)
    window_tz: Literal["utc", "device"] = "utc"

    @model_validator(mode="after")
    def _valid(self) -> RolloutOptions:
        for item in self.hold:
            if "=" not in item or item.startswith("="):
                raise ValueError(f"hold selector {item[:64]!r}: expected KEY=VALUE")
        try:
            self.policy()
        except PolicyError as exc:
            raise ValueError(str(exc)) from None
        return self

    def policy(self) -> Policy:
        return Policy.from_json(self.model_dump(exclude={"revision"}))


class StartIn(RolloutOptions):
    """``POST /groups/{name}/rollouts``: the revision and the options."""

    revision: int = Field(ge=1, le=2**31 - 1)


class PolicyIn(BaseModel):
    """``PUT /groups/{name}/rollout-policy``: the policy, or null for none."""

    model_config = ConfigDict(extra="forbid")

    rollout_policy: RolloutOptions | None = None


class ErrorOut(BaseModel):
    step: str | None
    text: str | None


class RolloutDeviceOut(BaseModel):
    guid: str
    serial: str | None
    batch: int
    state: str
    from_revision: int | None
    started_at: str | None
    finished_at: str | None
    error: ErrorOut | None


class BatchOut(BaseModel):
    batch: int
    devices: int
    counts: dict[str, int]


class RolloutOut(BaseModel):
    id: int
    group: str
    revision: int
    from_revision: int | None
    state: str
    reason: str | None
    batch: int
    batches: int
    options: dict[str, object]
    rollback_of: int | None
    created_by: str
    created_at: str
    updated_at: str
    counts: dict[str, int]
    batch_counts: list[BatchOut] = Field(default_factory=list)
    devices: list[RolloutDeviceOut] | None = None


class RolloutListOut(BaseModel):
    items: list[RolloutOut]
    total: int
    offset: int


class PolicyOut(BaseModel):
    group: str
    rollout_policy: dict[str, object] | None
