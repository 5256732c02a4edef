"""Request bodies of the groups, revisions, labels and tokens admin API.

Revision bodies carry secrets (registry ``auth.json``, secret files). FastAPI's own 422
answer echoes the offending input, so :func:`parse` validates those bodies itself and
answers only locations and messages.
"""

from __future__ import annotations

import re
from typing import Any, Literal, TypeVar

from fastapi import HTTPException
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from owner.rollouts_schemas import RolloutOptions

IMAGE_REF = re.compile(
    r"^[a-z0-9][a-z0-9._\-/:]*(?::[A-Za-z0-9_][A-Za-z0-9._-]{0,127})?@sha256:[0-9a-f]{64}$"
)
NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
LABEL_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,62}$")
TRANSPORTS = ("registry", "oci", "oci-archive", "containers-storage")
APPLY_MODES = ("stage", "switch", "switch-reboot")

Model = TypeVar("Model", bound=BaseModel)


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _labels(value: dict[str, str]) -> dict[str, str]:
    for key, text in value.items():
        if not LABEL_KEY.match(key):
            raise ValueError(f"bad label key {key!r}")
        if len(text) > 256:
            raise ValueError(f"label {key!r}: value longer than 256")
    return value


class GroupIn(Strict):
    """A new group: selectors, explicit members, or the default."""

    name: str = Field(pattern=NAME)
    description: str = Field(default="", max_length=2000)
    priority: int = Field(default=0, ge=-1_000_000, le=1_000_000)
    model: str | None = Field(default=None, min_length=1, max_length=256)
    serial_pattern: str | None = Field(default=None, min_length=1, max_length=256)
    labels: dict[str, str] = Field(default_factory=dict)
    members: list[str] = Field(default_factory=list, max_length=100_000)
    is_default: bool = False
    #: Rollout options a publish starts a rollout with (docs/rollouts.md).
    rollout_policy: RolloutOptions | None = None

    _check_labels = field_validator("labels")(_labels)

    @field_validator("members")
    @classmethod
    def _members(cls, value: list[str]) -> list[str]:
        out = [m.strip() for m in value]
        if any(not m or len(m) > 256 for m in out):
            raise ValueError("members are GUIDs or serial numbers (1 to 256 characters)")
        return out


class LabelsIn(Strict):
    labels: dict[str, str]

    _check_labels = field_validator("labels")(_labels)


class FileSpec(Strict):
    path: str = Field(pattern=r"^/[^\x00]*$", max_length=4096)
    mode: str = Field(default="0644", pattern=r"^0?[0-7]{3,4}$")
    owner: str = Field(default="root:root", max_length=256)
    content: str = Field(max_length=1024 * 1024)


class UnitSpec(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9@._\-]+\.(service|timer|socket|mount|path|target)$")
    content: str | None = Field(default=None, max_length=1024 * 1024)
    enable: bool = True


class SshSpec(Strict):
    user: str = Field(default="root", pattern=r"^[a-z_][a-z0-9_-]{0,31}$")
    keys: list[str] = Field(default_factory=list)


class RevisionConfig(Strict):
    """What a device gets besides the image (no secrets: those go in ``secret_files``)."""

    files: list[FileSpec] = Field(default_factory=list)
    units: list[UnitSpec] = Field(default_factory=list)
    ssh: SshSpec | None = None
    #: containers ``policy.json``.
    policy: dict[str, Any] | None = None
    #: ``/etc/containers/registries.d`` file name -> YAML text.
    registries_d: dict[str, str] = Field(default_factory=dict)
    #: Signature public keys: file name -> PEM.
    public_keys: dict[str, str] = Field(default_factory=dict)


class RevisionIn(Strict):
    """A revision to publish; ``registry_auth`` and ``secret_files`` are write-only."""

    image: str = Field(max_length=1024)
    transport: Literal["registry", "oci", "oci-archive", "containers-storage"] = "registry"
    apply_mode: Literal["stage", "switch", "switch-reboot"] = "switch-reboot"
    config: RevisionConfig = Field(default_factory=RevisionConfig)
    #: A containers ``auth.json`` document.
    registry_auth: dict[str, Any] | None = None
    secret_files: list[FileSpec] = Field(default_factory=list)

    @field_validator("image")
    @classmethod
    def _image(cls, value: str) -> str:
        if not IMAGE_REF.match(value):
            raise ValueError("image must be pinned by digest: name[:tag]@sha256:<64 hex>")
        return value


class TokenIn(Strict):
    name: str = Field(min_length=1, max_length=128)
    role: Literal["admin", "operator", "viewer"] = "viewer"


def parse(model: type[Model], body: object) -> Model:
    """``body`` validated as ``model``; a 422 that never repeats the input."""
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        errors = [{"loc": list(e["loc"]), "msg": e["msg"]} for e in exc.errors(include_input=False)]
        raise HTTPException(422, errors) from None
