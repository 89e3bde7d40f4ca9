"""The base of every JSON API request body: strings without NUL characters (no value telerad keeps may hold
one, and PostgreSQL text cannot), so a NUL is a 400 naming the field rather than a database error."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, field_validator


def _no_nul(value: Any) -> Any:
    if isinstance(value, str) and "\x00" in value:
        raise ValueError("NUL characters are not allowed")
    if isinstance(value, list):
        for item in value:
            _no_nul(item)
    return value


class ApiModel(BaseModel):
    @field_validator("*", mode="before")
    @classmethod
    def _reject_nul(cls, value: Any) -> Any:
        return _no_nul(value)
