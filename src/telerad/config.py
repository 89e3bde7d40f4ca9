"""One typed settings object for the whole process.

Values come, highest priority first, from keyword arguments, ``TELERAD_*`` environment variables,
the TOML file (``TELERAD_CONFIG`` or ``$TELERAD_HOME/telerad.toml``), then the defaults below.
Defaults are secure: every listener binds loopback.
"""

from __future__ import annotations

import ipaddress
import os
from functools import lru_cache
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _default_home() -> Path:
    return Path(os.environ.get("TELERAD_HOME", Path.home() / ".telerad"))


def _toml_path() -> Path:
    explicit = os.environ.get("TELERAD_CONFIG")
    return Path(explicit) if explicit else _default_home() / "telerad.toml"


class OidcProvider(BaseModel):
    """One OpenID Connect identity provider (e.g. a hospital's own), in the TOML file as
    ``[oidc_providers.<name>]``."""

    issuer: str
    client_id: str
    client_secret: str = ""
    scopes: str = "openid profile email"
    username_claim: str = "preferred_username"  # links a first sign-in to the telerad user of that name
    sites: list[str] = Field(default_factory=list, description="Only users of these sites may use it; [] = any")
    trust_mfa: bool = False  # accept the IdP's multi-factor sign-in (amr claim) as telerad's second factor


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TELERAD_", extra="ignore")

    home: Path = Field(default_factory=_default_home, description="Data directory (database, blobs, logs)")
    database_url: str = Field("", description="SQLAlchemy URL; default SQLite (WAL) in the data directory")
    http_host: str = "127.0.0.1"
    http_port: int = 8080
    dicom_host: str = "127.0.0.1"
    dicom_port: int = 11112
    ae_title: str = "TELERAD"

    # Ingest caps (issue: an oversized or undecodable object is rejected with a clear reason)
    max_object_bytes: int = 4 * 1024**3
    # Write new blobs with O_DIRECT (storage/direct.py): no copy into page-cache memory, which is costly to fill on
    # virtual machines (~20 % less server CPU per CT object, docs/benchmarks.md); the first read of a new series
    # is then read ahead from the disk (readahead_series_mb). Falls back to buffered writes on a file system that
    # refuses O_DIRECT (tmpfs).
    blob_direct_write: bool = True
    # When a viewer first reads an instance of a series, read the rest of the series into the page cache in the
    # background, up to this many MiB (storage/readahead.py); 0: off. Retrieves of several instances (WADO-RS,
    # C-GET, C-MOVE) read their selection ahead the same way.
    readahead_series_mb: int = Field(1024, ge=0)
    # Keep the read-ahead's mappings of blobs, up to this many MiB, and send files to a loopback peer (a reverse
    # proxy, a local client) from them: one copy in the server instead of two (storage/mappings.py); 0: off.
    # Address space, not memory: the pages are the page cache's, but they count in the process's resident size.
    mapped_blobs_mb: int = Field(4096, ge=0)
    max_rows: int = 65535
    max_columns: int = 65535
    max_frames: int = 100_000

    # DIMSE
    dimse_max_associations: int = 32
    dimse_max_pdu: int = 262_144
    dimse_timeout: float = 60.0
    # Processes serving DICOM associations (Linux): `telerad serve` accepts them on dicom_port and hands each to
    # the least busy of itself and N - 1 workers (telerad/workers.py). More than 1 uses more CPU cores for
    # DIMSE; dimse_max_associations is per process.
    dimse_workers: int = Field(1, ge=1, le=64)
    # Serve store-only associations on the lean path (adapters/dimse/lean.py); False: pynetdicom serves all.
    dimse_lean_store: bool = True
    dimse_tls_cert: Path | None = None
    dimse_tls_key: Path | None = None
    dimse_tls_ca: Path | None = Field(None, description="CA bundle; set to require client certificates")

    # HTTP TLS (PS3.15 BCP 195: TLS 1.2 or newer; 1.3 preferred)
    http_tls_cert: Path | None = None
    http_tls_key: Path | None = None
    # uvicorn's line per HTTP request on stdout. Off by default: the audit trail already records every request
    # that touches data, and an access line would copy query strings (Patient IDs, names) into the process log;
    # formatting it was also ~9 % of the Python time of a frames request in a profile.
    http_access_log: bool = False

    # Authentication (security/)
    mfa_required_roles: list[str] = Field(default_factory=lambda: ["admin", "radiologist"],
                                          description="Roles that must use a TOTP second factor to sign in")
    password_min_length: int = 12
    session_idle_minutes: int = 30
    session_max_hours: int = 12
    login_max_failures: int = 5  # per account, within login_window_minutes, then locked
    login_max_failures_per_source: int = 20  # per source address, within login_window_minutes
    login_window_minutes: int = 15
    login_lockout_minutes: int = 15
    token_max_days: int = 365
    break_glass_minutes: int = 60

    # OpenID Connect identity providers (optional): name -> settings; see docs/security.md
    oidc_providers: dict[str, OidcProvider] = Field(default_factory=dict)

    # Audit trail (IHE ATNA)
    audit_key_file: Path | None = Field(None, description="HMAC key of the audit chain (default: home/audit.key)")
    audit_syslog_host: str = Field("", description="Audit Record Repository (syslog over TLS, RFC 5425); empty: off")
    audit_syslog_port: int = 6514
    audit_syslog_ca: Path | None = None
    audit_syslog_cert: Path | None = None
    audit_syslog_key: Path | None = None
    audit_syslog_retry_seconds: float = 5.0

    # DICOMweb
    public_base_url: str = Field(default="", description="e.g. https://pacs.example.org; default: from the request")
    dicomweb_default_limit: int = 1000

    @model_validator(mode="after")
    def _fill_defaults(self) -> Settings:
        self.home = Path(self.home).expanduser()
        if not self.database_url:
            self.database_url = f"sqlite:///{self.home / 'telerad.db'}"
        if len(self.ae_title.strip()) == 0 or len(self.ae_title) > 16:
            raise ValueError("ae_title must be 1 to 16 characters (PS3.5 AE VR)")
        # Secure defaults (ARCHITECTURE: refuse a non-loopback listener without TLS and authentication;
        # every HTTP route but /healthz and the sign-in itself requires authentication).
        if bool(self.http_tls_cert) != bool(self.http_tls_key):
            raise ValueError("http_tls_cert and http_tls_key go together")
        if not is_loopback(self.http_host) and not self.http_tls_cert:
            raise ValueError(
                f"http_host {self.http_host!r} is not a loopback address: a listener reachable from the network "
                "needs TLS (http_tls_cert, http_tls_key)")
        from telerad.domain.access import parse_roles

        parse_roles(self.mfa_required_roles)
        if not is_loopback(self.dicom_host) and not (
            self.dimse_tls_cert and self.dimse_tls_key and self.dimse_tls_ca
        ):
            raise ValueError(
                f"dicom_host {self.dicom_host!r} is not a loopback address: a DICOM listener reachable from the "
                "network needs TLS with client certificates (dimse_tls_cert, dimse_tls_key, dimse_tls_ca)")
        return self

    @property
    def blob_dir(self) -> Path:
        return self.home / "blobs"

    @property
    def audit_key_path(self) -> Path:
        return self.audit_key_file or self.home / "audit.key"

    @property
    def https(self) -> bool:
        """Whether clients reach telerad over HTTPS (cookies then carry the Secure flag)."""
        return bool(self.http_tls_cert) or self.public_base_url.lower().startswith("https://")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml = TomlConfigSettingsSource(settings_cls, toml_file=_toml_path())
        return (init_settings, env_settings, toml)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()


def make_settings(**overrides: Any) -> Settings:
    """Build a settings object (tests and CLI options use this instead of the cached one)."""
    return Settings(**overrides)
