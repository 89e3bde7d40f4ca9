"""SQLAlchemy models of the archive index.

The hierarchy follows the DICOM information model (PS3.3 A.1.2): Patient -> Study -> Series -> Instance,
every level owned by exactly one site (tenant). UIDs are unique *within a site*: the same Patient ID at two
sites is two patients, and a study sent by two sites is two studies, so no tenant can see or overwrite
another's data through a UID collision.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    func,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


class Base(DeclarativeBase):
    pass


class Site(Base):
    """A tenant: a hospital or clinic that sends studies and receives reports."""

    __tablename__ = "sites"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    code: Mapped[str] = mapped_column(String(32), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    # Demo convenience: associations from *unregistered* AE titles on a loopback address land in this site.
    accept_unregistered_loopback: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime, server_default=func.now())

    nodes: Mapped[list[Node]] = relationship(back_populates="site")


class Node(Base):
    """A registered DICOM application entity of a site (PS3.7 D.3.3.3 AE titles)."""

    __tablename__ = "nodes"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    site_id: Mapped[int] = mapped_column(ForeignKey("sites.id", ondelete="CASCADE"), index=True)
    ae_title: Mapped[str] = mapped_column(String(16), unique=True)
    host: Mapped[str] = mapped_column(String(255))
    port: Mapped[int] = mapped_column(Integer)
    description: Mapped[str] = mapped_column(String(200), default="")

    site: Mapped[Site] = relationship(back_populates="nodes")


class Patient(Base):
    __tablename__ = "patients"
    __table_args__ = (UniqueConstraint("site_id", "patient_id", "issuer", name="uq_patient_site_pid"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    site_id: Mapped[int] = mapped_column(ForeignKey("sites.id"), index=True)
    patient_id: Mapped[str] = mapped_column(String(64), default="")
    issuer: Mapped[str] = mapped_column(String(64), default="")
    patient_name: Mapped[str] = mapped_column(String(324), default="")
    birth_date: Mapped[str] = mapped_column(String(8), default="")
    sex: Mapped[str] = mapped_column(String(16), default="")


class Study(Base):
    __tablename__ = "studies"
    __table_args__ = (
        UniqueConstraint("site_id", "study_uid", name="uq_study_site_uid"),
        Index("ix_studies_site_date", "site_id", "study_date"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    site_id: Mapped[int] = mapped_column(ForeignKey("sites.id"), index=True)
    patient_fk: Mapped[int] = mapped_column(ForeignKey("patients.id"), index=True)
    study_uid: Mapped[str] = mapped_column(String(64), index=True)
    study_date: Mapped[str] = mapped_column(String(8), default="")
    study_time: Mapped[str] = mapped_column(String(16), default="")
    accession_number: Mapped[str] = mapped_column(String(16), default="", index=True)
    study_id: Mapped[str] = mapped_column(String(16), default="")
    description: Mapped[str] = mapped_column(String(64), default="")
    referring_physician: Mapped[str] = mapped_column(String(324), default="")
    # Study-level DICOM JSON (patient + study modules) of the first instance, for includefield.
    attributes_json: Mapped[str] = mapped_column(Text, default="{}")
    num_series: Mapped[int] = mapped_column(Integer, default=0)
    num_instances: Mapped[int] = mapped_column(Integer, default=0)
    modalities: Mapped[str] = mapped_column(String(128), default="")  # backslash separated
    created_at: Mapped[datetime] = mapped_column(DateTime, server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(DateTime, server_default=func.now())

    patient: Mapped[Patient] = relationship()


class Series(Base):
    __tablename__ = "series"
    __table_args__ = (UniqueConstraint("site_id", "series_uid", name="uq_series_site_uid"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    site_id: Mapped[int] = mapped_column(ForeignKey("sites.id"), index=True)
    study_fk: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    series_uid: Mapped[str] = mapped_column(String(64), index=True)
    modality: Mapped[str] = mapped_column(String(16), default="")
    series_number: Mapped[int | None] = mapped_column(Integer, nullable=True)
    description: Mapped[str] = mapped_column(String(64), default="")
    body_part: Mapped[str] = mapped_column(String(16), default="")
    pps_start_date: Mapped[str] = mapped_column(String(8), default="")
    pps_start_time: Mapped[str] = mapped_column(String(16), default="")
    attributes_json: Mapped[str] = mapped_column(Text, default="{}")
    num_instances: Mapped[int] = mapped_column(Integer, default=0)

    study: Mapped[Study] = relationship()


class Instance(Base):
    __tablename__ = "instances"
    __table_args__ = (UniqueConstraint("site_id", "sop_uid", name="uq_instance_site_uid"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    site_id: Mapped[int] = mapped_column(ForeignKey("sites.id"), index=True)
    series_fk: Mapped[int] = mapped_column(ForeignKey("series.id"), index=True)
    sop_uid: Mapped[str] = mapped_column(String(64), index=True)
    sop_class_uid: Mapped[str] = mapped_column(String(64), default="")
    instance_number: Mapped[int | None] = mapped_column(Integer, nullable=True)
    transfer_syntax_uid: Mapped[str] = mapped_column(String(64))
    rows: Mapped[int | None] = mapped_column(Integer, nullable=True)
    columns: Mapped[int | None] = mapped_column(Integer, nullable=True)
    number_of_frames: Mapped[int] = mapped_column(Integer, default=0)
    blob_key: Mapped[str] = mapped_column(String(64), index=True)  # SHA-256 hex of the stored file
    size: Mapped[int] = mapped_column(BigInteger)
    # DICOM JSON (PS3.18 F.2) of the instance, large values as BulkDataURI; a compact binary is avoided so
    # /metadata is a concatenation of stored strings.
    metadata_json: Mapped[str] = mapped_column(Text)
    # Frame index: JSON [[[offset, length], ...fragments], ...frames] into the stored file, or "" if none.
    frames_json: Mapped[str] = mapped_column(Text, default="")
    source_ae: Mapped[str] = mapped_column(String(64), default="")
    received_at: Mapped[datetime] = mapped_column(DateTime, server_default=func.now())

    series: Mapped[Series] = relationship()


class StoreConflict(Base):
    """Different bytes received under an already stored SOP Instance UID: the first is kept, this is recorded."""

    __tablename__ = "store_conflicts"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    site_id: Mapped[int] = mapped_column(ForeignKey("sites.id"), index=True)
    sop_uid: Mapped[str] = mapped_column(String(64), index=True)
    kept_blob_key: Mapped[str] = mapped_column(String(64))
    received_sha256: Mapped[str] = mapped_column(String(64))
    received_size: Mapped[int] = mapped_column(BigInteger)
    source: Mapped[str] = mapped_column(String(64), default="")
    received_at: Mapped[datetime] = mapped_column(DateTime, server_default=func.now())

