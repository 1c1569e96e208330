"""JSON Schemas of the OpenStack plugins: protect options, restore parameters, saved info."""

from __future__ import annotations

from typing import Any

_TIME = {"type": ["number", "null"], "description": "Unix time"}

_TARGET_PROJECT = {
    "type": "string",
    "minLength": 1,
    "description": "Project (id or name) to restore into; default: what the project became in "
    "this restore, else the original project.",
}
_NAME = {
    "type": "string",
    "minLength": 1,
    "description": "Exact name of the restored resource (give it per resource, TYPE#ID).",
}
_SUFFIX = {
    "type": "string",
    "description": "Appended to the original name; default -restored-<checkpoint id[:8]>; "
    "'' keeps the name.",
}
_COMMON_RESTORE = {"target_project": _TARGET_PROJECT, "name": _NAME, "name_suffix": _SUFFIX}

PROJECT_OPTIONS: dict[str, Any] = {
    "type": "object",
    "properties": {},
    "additionalProperties": False,
}
PROJECT_RESTORE: dict[str, Any] = {
    "type": "object",
    "properties": {"target_project": _TARGET_PROJECT},
    "additionalProperties": False,
}
PROJECT_SAVED: dict[str, Any] = {
    "type": "object",
    "properties": {
        "project_id": {"type": "string"},
        "name": {"type": ["string", "null"]},
        "description": {"type": ["string", "null"]},
        "domain_id": {"type": ["string", "null"]},
        "servers": {"type": "integer"},
        "volumes": {"type": "integer"},
        "images": {"type": "integer"},
    },
    "required": ["project_id"],
}

SERVER_OPTIONS: dict[str, Any] = {
    "type": "object",
    "properties": {
        "quiesce": {
            "type": "string",
            "enum": ["pause", "lock", "none"],
            "default": "pause",
            "description": "How to hold the server while its volumes are snapshotted.",
        },
    },
    "additionalProperties": False,
}
SERVER_RESTORE: dict[str, Any] = {
    "type": "object",
    "properties": {
        **_COMMON_RESTORE,
        "flavor": {"type": "string", "description": "Flavor id or name (default: the original)."},
        "image": {
            "type": "string",
            "description": "Image id to boot from when the boot image is not in the checkpoint.",
        },
        "networks": {
            "oneOf": [
                {"type": "string", "enum": ["none", "auto"]},
                {"type": "array", "items": {"type": "string", "minLength": 1}},
            ],
            "description": "Network ids (default: the original ones, or none if it had none).",
        },
        "attach_volumes": {"type": "boolean", "default": True},
    },
    "additionalProperties": False,
}
SERVER_SAVED: dict[str, Any] = {
    "type": "object",
    "properties": {
        "project_id": {"type": "string"},
        "quiesce": {"type": "string", "enum": ["pause", "lock", "none"]},
        "quiesced_at": _TIME,
        "released_at": _TIME,
        "definition": {
            "type": "object",
            "properties": {
                "name": {"type": "string"},
                "flavor": {"type": "object"},
                "image_id": {"type": ["string", "null"]},
                "key_name": {"type": ["string", "null"]},
                "metadata": {"type": "object"},
                "security_groups": {"type": "array"},
                "networks": {"type": "array"},
                "block_device_mapping": {"type": "array"},
            },
        },
        "saved_at": _TIME,
    },
    "required": ["project_id"],
}

VOLUME_OPTIONS: dict[str, Any] = {
    "type": "object",
    "properties": {
        "incremental": {
            "type": "boolean",
            "default": False,
            "description": "Ask Cinder for an incremental backup (needs an earlier full one).",
        },
    },
    "additionalProperties": False,
}
VOLUME_RESTORE: dict[str, Any] = {
    "type": "object",
    "properties": {**_COMMON_RESTORE},
    "additionalProperties": False,
}
VOLUME_SAVED: dict[str, Any] = {
    "type": "object",
    "properties": {
        "project_id": {"type": "string"},
        "volume": {"type": "object"},
        "snapshot_id": {"type": ["string", "null"]},
        "snapshot_started_at": _TIME,
        "snapshot_at": _TIME,
        "snapshot_deleted_at": _TIME,
        "backup_id": {"type": ["string", "null"]},
        "backup_at": _TIME,
        "backup_failed": {"type": "boolean"},
        "failed_backup_id": {"type": "string"},
        "size_bytes": {"type": "integer"},
    },
    "required": ["project_id"],
}

IMAGE_OPTIONS: dict[str, Any] = {"type": "object", "properties": {}, "additionalProperties": False}
IMAGE_RESTORE: dict[str, Any] = {
    "type": "object",
    "properties": {
        **_COMMON_RESTORE,
        "use_existing": {
            "type": "boolean",
            "default": False,
            "description": "Reuse the original image when it still exists with the same "
            "checksum, instead of uploading a copy.",
        },
    },
    "additionalProperties": False,
}
IMAGE_SAVED: dict[str, Any] = {
    "type": "object",
    "properties": {
        "project_id": {"type": ["string", "null"]},
        "image": {"type": "object"},
        "data": {"type": "object"},
        "checksum": {"type": ["string", "null"]},
        "os_hash_algo": {"type": ["string", "null"]},
        "os_hash_value": {"type": ["string", "null"]},
        "size": {"type": "integer"},
        "saved_at": _TIME,
    },
    "required": ["image", "data"],
}
