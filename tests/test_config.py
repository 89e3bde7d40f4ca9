"""One typed settings object: defaults, TOML file, environment (highest) — issue #2 §1."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from telerad.config import Settings


def test_defaults_are_loopback(monkeypatch, tmp_path):
    monkeypatch.setenv("TELERAD_HOME", str(tmp_path))
    for var in ("TELERAD_HTTP_PORT", "TELERAD_DATABASE_URL", "TELERAD_CONFIG", "TELERAD_AE_TITLE"):
        monkeypatch.delenv(var, raising=False)
    s = Settings()
    assert (s.http_host, s.http_port, s.dicom_host, s.dicom_port, s.ae_title) == (
        "127.0.0.1", 8080, "127.0.0.1", 11112, "TELERAD")
    assert s.database_url == f"sqlite:///{tmp_path / 'telerad.db'}"
    assert s.blob_dir == tmp_path / "blobs"


def test_toml_then_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("TELERAD_HOME", str(tmp_path))
    monkeypatch.delenv("TELERAD_CONFIG", raising=False)
    (tmp_path / "telerad.toml").write_text('http_port = 9090\nae_title = "FROMTOML"\nmax_rows = 4096\n')
    s = Settings()
    assert (s.http_port, s.ae_title, s.max_rows) == (9090, "FROMTOML", 4096)
    monkeypatch.setenv("TELERAD_HTTP_PORT", "9191")
    assert Settings().http_port == 9191
    other = tmp_path / "other.toml"
    other.write_text("dicom_port = 2762\n")
    monkeypatch.setenv("TELERAD_CONFIG", str(other))
    assert Settings().dicom_port == 2762


def test_invalid_values_are_refused(monkeypatch, tmp_path):
    monkeypatch.setenv("TELERAD_HOME", str(tmp_path))
    monkeypatch.setenv("TELERAD_AE_TITLE", "A_TITLE_LONGER_THAN_16")
    with pytest.raises(ValidationError, match="ae_title"):
        Settings()
    monkeypatch.setenv("TELERAD_AE_TITLE", "OK")
    monkeypatch.setenv("TELERAD_HTTP_PORT", "not-a-port")
    with pytest.raises(ValidationError):
        Settings()


def test_non_loopback_listeners_are_refused(monkeypatch, tmp_path):
    monkeypatch.setenv("TELERAD_HOME", str(tmp_path))
    for host in ("127.0.0.1", "::1", "localhost", "127.0.0.2"):
        assert Settings(http_host=host, dicom_host=host).http_host == host
    with pytest.raises(ValidationError, match="needs TLS"):
        Settings(http_host="0.0.0.0")
    with pytest.raises(ValidationError, match="go together"):
        Settings(http_host="0.0.0.0", http_tls_cert=tmp_path / "c.pem")
    assert Settings(http_host="0.0.0.0", http_tls_cert=tmp_path / "c.pem",
                    http_tls_key=tmp_path / "k.pem").http_host == "0.0.0.0"
    with pytest.raises(ValidationError, match="client certificates"):
        Settings(dicom_host="0.0.0.0")
    with pytest.raises(ValidationError, match="client certificates"):
        Settings(dicom_host="10.1.2.3", dimse_tls_cert=tmp_path / "c.pem", dimse_tls_key=tmp_path / "k.pem")
    ok = Settings(dicom_host="0.0.0.0", dimse_tls_cert=tmp_path / "c.pem", dimse_tls_key=tmp_path / "k.pem",
                  dimse_tls_ca=tmp_path / "ca.pem")
    assert ok.dicom_host == "0.0.0.0"
