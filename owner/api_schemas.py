"""Response models of the owner's admin API (``/api/v1``), as OpenAPI shows them.

The routes build plain dicts (the CLI and ``/ui`` share those views) and FastAPI checks
each against its model here before answering. The models forbid keys they do not
declare, so a view that grows a key without its model fails the tests instead of
losing the key silently. Times are ISO 8601 text in UTC, as the views write them.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema

#: An ISO 8601 time in UTC (``2026-01-02T03:04:05.123456+00:00``).
Time = Annotated[str, WithJsonSchema({"type": "string", "format": "date-time"})]
#: A device GUID in UUID text form.
GuidText = Annotated[str, WithJsonSchema({"type": "string", "format": "uuid"})]
#: A JSON object whose keys this API does not fix (devmod facts, event details, ...).
JsonObject = dict[str, Any]


class Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


# ---------------------------------------------------------------------------- vouchers


class ImportResultOut(Out):
    index: int = Field(description="The voucher's place in the request body, from 0.")
    status: str = Field(description="``imported`` or ``refused``.")
    guid: GuidText | None
    reason: str | None = Field(description="Why it was refused.")


class ImportOut(Out):
    """One result per voucher of the body; 200 when all were imported, else 422."""

    results: list[ImportResultOut]


class To0Out(Out):
    registered_until: Time | None
    next_attempt_at: Time | None
    attempts: int
    last_error: str | None


class VoucherOut(Out):
    guid: GuidText | None
    device_info: str
    state: str = Field(description="``active``, ``replaced`` or ``handed_on``.")
    entries: int
    owner_key_fingerprint: str
    imported_at: Time | None
    replaces: GuidText | None
    replaced_by: GuidText | None
    to0: To0Out | None = Field(description="The voucher's TO0 registration work, if any.")


class VoucherPage(Out):
    total: int
    offset: int
    items: list[VoucherOut]


class To0Counts(Out):
    pending: int
    expiring: int
    failing: int
    expiring_within_seconds: int


class SummaryOut(Out):
    devices: dict[str, int] = Field(description="Devices by status (every status present).")
    vouchers: dict[str, int] = Field(description="Vouchers by state (every state present).")
    to0: To0Counts


class OnboardingOut(Out):
    guid: GuidText | None
    new_guid: GuidText | None
    devmod: JsonObject
    modules: list[JsonObject]
    completed_at: Time | None


class OnboardingPage(Out):
    total: int
    offset: int
    items: list[OnboardingOut]


# ---------------------------------------------------------------------------- devices


class ErrorText(Out):
    step: str | None
    text: str | None


class DeviceEventOut(Out):
    at: Time | None
    kind: str
    detail: JsonObject


class DeviceRolloutOut(Out):
    rollout: int | None
    revision: int | None
    rollout_state: str
    batch: int
    state: str
    error: ErrorText | None


class DeviceOut(Out):
    guid: GuidText
    guids: list[GuidText] = Field(description="Every GUID the device has had, oldest first.")
    serial: str | None
    model: str | None
    labels: dict[str, str]
    group: str | None
    assigned_revision: int | None
    revision: int | None
    status: str
    delivery: JsonObject | None
    desired_revision: int | None
    desired_generation: int
    applied_revision: int | None
    apply_state: str | None
    booted_image: str | None
    booted_digest: str | None
    staged_image: str | None
    staged_digest: str | None
    health: str | None
    rolled_back: bool | None
    last_checkin_at: Time | None
    last_error: ErrorText | None
    checkin: str = Field(description="The check-in credential: ``active``, ``revoked`` or ``none``.")
    overdue: bool | None
    created_at: Time | None
    updated_at: Time | None


class DeviceDetail(DeviceOut):
    devmod: JsonObject
    events: list[DeviceEventOut]
    rollouts: list[DeviceRolloutOut]


class DevicePage(Out):
    total: int
    offset: int
    items: list[DeviceOut]


# ---------------------------------------------------------------------------- groups


class RevisionOut(Out):
    group: str | None
    number: int
    image: str
    transport: str
    apply_mode: str
    config: JsonObject = Field(description="The revision's configuration (a ``RevisionConfig``).")
    has_registry_auth: bool
    secret_files: list[str] = Field(description="Paths only: secrets are never returned.")
    published_at: Time | None
    published_by: str


class PublishedOut(RevisionOut):
    target_revision: int | None
    rollout: int | None = Field(description="The rollout the group's policy started, if any.")
    behind: int = Field(description="Onboarded devices that stay on their revision.")
    hint: str | None


class RevisionList(Out):
    items: list[RevisionOut]


class GroupOut(Out):
    name: str
    description: str
    priority: int
    model: str | None
    serial_pattern: str | None
    labels: dict[str, str]
    members: list[str]
    is_default: bool
    created_at: Time | None
    created_by: str | None
    current_revision: int | None
    rollout_policy: JsonObject | None
    devices: int


class GroupDetail(GroupOut):
    revision: RevisionOut | None


class GroupList(Out):
    items: list[GroupOut]


class DeletedOut(Out):
    deleted: str


# ---------------------------------------------------------------------------- tokens, audit


class TokenOut(Out):
    id: int | None
    name: str
    role: str
    created_at: Time | None
    revoked_at: Time | None


class NewTokenOut(TokenOut):
    token: str = Field(description="The token itself: shown in this answer only.")


class TokenList(Out):
    items: list[TokenOut]


class AuditOut(Out):
    at: Time | None
    who: str
    action: str
    target: str
    detail: JsonObject


class AuditPage(Out):
    total: int
    offset: int
    items: list[AuditOut]
