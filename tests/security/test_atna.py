"""Audit records as DICOM audit messages (PS3.15 A.5): event codes, participants, participant objects."""

from __future__ import annotations

import base64
import xml.etree.ElementTree as ET
from io import BytesIO

import pytest
from pydicom import Dataset
from pydicom.filereader import read_dataset
from sqlalchemy import select

from telerad.context import Context
from telerad.db.models import AuditEvent
from telerad.security.atna import to_audit_message
from telerad.security.audit import MINOR_FAILURE, Action, Event

AE = "TELERAD_TEST"
STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"  # Study Root Query/Retrieve Information Model - FIND
HOST = "telerad.example.org"


def _record(ctx: Context, event: Event) -> AuditEvent:
    """Write ``event`` through the real audit log and read its row back."""
    ctx.audit.record(event, wait=True)
    with ctx.db.session() as s:
        return s.execute(select(AuditEvent).order_by(AuditEvent.seq.desc()).limit(1)).scalar_one()


def _message(ctx: Context, event: Event) -> ET.Element:
    xml = to_audit_message(_record(ctx, event), ae_title=AE, host=HOST)
    assert xml.startswith(b'<?xml version="1.0" encoding="UTF-8"?>')
    return ET.fromstring(xml)


def _code(el: ET.Element | None) -> tuple[str, str, str]:
    assert el is not None
    return el.get("csd-code", ""), el.get("codeSystemName", ""), el.get("originalText", "")


def _participants(root: ET.Element) -> dict[str, ET.Element]:
    return {p.get("UserID", ""): p for p in root.findall("ActiveParticipant")}


def _objects(root: ET.Element) -> dict[str, ET.Element]:
    return {_code(o.find("ParticipantObjectIDTypeCode"))[0]: o for o in root.findall("ParticipantObjectIdentification")}


def _schema_order(root: ET.Element) -> None:
    """PS3.15 A.5.1: EventIdentification, ActiveParticipant+, AuditSourceIdentification, objects*."""
    tags = [child.tag for child in root]
    assert root.tag == "AuditMessage"
    assert tags[0] == "EventIdentification"
    n = tags.count("ActiveParticipant")
    assert n >= 1 and tags[1:1 + n] == ["ActiveParticipant"] * n
    assert tags[1 + n] == "AuditSourceIdentification"
    assert all(t == "ParticipantObjectIdentification" for t in tags[2 + n:])
    for obj in root.findall("ParticipantObjectIdentification"):
        inner = [c.tag for c in obj]
        assert inner[0] == "ParticipantObjectIDTypeCode"
        assert inner == sorted(inner, key=["ParticipantObjectIDTypeCode", "ParticipantObjectName",
                                           "ParticipantObjectQuery", "ParticipantObjectDetail"].index)
    event = root.find("EventIdentification")
    assert event is not None
    event_tags = [c.tag for c in event]
    assert event_tags[0] == "EventID"
    assert event_tags == sorted(event_tags, key=["EventID", "EventTypeCode", "EventOutcomeDescription"].index)


def test_retrieve_is_instances_transferred_with_study_and_patient(ctx: Context) -> None:
    root = _message(ctx, Event(Action.RETRIEVE, actor_type="user", actor="dr.house", source="10.1.2.3",
                               site_code="GH", patient_id="PAT-1", patient_name="Doe^Jane", study_uid="1.2.3.4",
                               details={"method": "GET", "path": "/dicomweb/studies/1.2.3.4"}))
    _schema_order(root)
    event = root.find("EventIdentification")
    assert event is not None
    assert _code(event.find("EventID")) == ("110104", "DCM", "DICOM Instances Transferred")
    assert event.get("EventActionCode") == "R"
    assert event.get("EventOutcomeIndicator") == "0"
    assert event.get("EventDateTime", "").endswith("Z")

    people = _participants(root)
    user, app = people["dr.house"], people[AE]
    assert user.get("UserIsRequestor") == "true"
    assert (user.get("NetworkAccessPointID"), user.get("NetworkAccessPointTypeCode")) == ("10.1.2.3", "2")
    assert _code(user.find("RoleIDCode")) == ("110152", "DCM", "Destination Role ID")
    assert app.get("UserIsRequestor") == "false"
    assert app.get("AlternativeUserID") == f"AETITLES={AE}"
    assert (app.get("NetworkAccessPointID"), app.get("NetworkAccessPointTypeCode")) == (HOST, "1")
    assert _code(app.find("RoleIDCode")) == ("110153", "DCM", "Source Role ID")

    source = root.find("AuditSourceIdentification")
    assert source is not None and source.get("AuditSourceID") == AE

    objects = _objects(root)
    study, patient = objects["110180"], objects["2"]
    assert (study.get("ParticipantObjectID"), study.get("ParticipantObjectTypeCode"),
            study.get("ParticipantObjectTypeCodeRole")) == ("1.2.3.4", "2", "3")
    assert _code(study.find("ParticipantObjectIDTypeCode")) == ("110180", "DCM", "Study Instance UID")
    assert (patient.get("ParticipantObjectID"), patient.get("ParticipantObjectTypeCode"),
            patient.get("ParticipantObjectTypeCodeRole")) == ("PAT-1", "1", "1")
    assert _code(patient.find("ParticipantObjectIDTypeCode")) == ("2", "RFC-3881", "Patient Number")
    assert patient.findtext("ParticipantObjectName") == "Doe^Jane"


def test_store_is_a_create_with_the_sender_as_source(ctx: Context) -> None:
    root = _message(ctx, Event(Action.STORE, actor_type="node", actor="GH_MODALITY", source="192.0.2.7",
                               patient_id="PAT-2", study_uid="1.2.3.5", details={"instances": 3}))
    _schema_order(root)
    event = root.find("EventIdentification")
    assert event is not None
    assert _code(event.find("EventID"))[0] == "110104"
    assert event.get("EventActionCode") == "C"
    people = _participants(root)
    assert _code(people["GH_MODALITY"].find("RoleIDCode"))[0] == "110153"
    assert people["GH_MODALITY"].get("AlternativeUserID") == "AETITLES=GH_MODALITY"
    assert _code(people[AE].find("RoleIDCode"))[0] == "110152"
    assert set(_objects(root)) == {"110180", "2"}
    assert _objects(root)["2"].find("ParticipantObjectName") is None  # no name recorded: none invented


def test_query_carries_the_request_base64_encoded(ctx: Context) -> None:
    query = "PatientID=PAT-1&StudyDate=20260101-&x=<&>\"'"
    root = _message(ctx, Event(Action.QUERY, actor_type="token", actor="ris-bot", source="2001:db8::5",
                               details={"method": "GET", "path": "/dicomweb/studies", "query": query}))
    _schema_order(root)
    event = root.find("EventIdentification")
    assert event is not None
    assert _code(event.find("EventID")) == ("110112", "DCM", "Query")
    assert event.get("EventActionCode") == "E"
    people = _participants(root)
    assert _code(people["ris-bot"].find("RoleIDCode"))[0] == "110153"
    assert people["ris-bot"].get("NetworkAccessPointTypeCode") == "2"
    assert _code(people[AE].find("RoleIDCode"))[0] == "110152"
    (obj,) = root.findall("ParticipantObjectIdentification")
    assert (obj.get("ParticipantObjectTypeCode"), obj.get("ParticipantObjectTypeCodeRole")) == ("2", "3")
    assert obj.get("ParticipantObjectID") == "/dicomweb/studies"
    assert base64.b64decode(obj.findtext("ParticipantObjectQuery") or "") == f"/dicomweb/studies?{query}".encode()


def test_c_find_query_is_the_identifier_dataset(ctx: Context) -> None:
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.PatientID = "PAT-1"
    identifier.StudyDate = "20260101-"
    identifier.PatientName = ""
    root = _message(ctx, Event(Action.QUERY, actor_type="node", actor="GH_PACS", source="192.0.2.10",
                               patient_id="PAT-1", details={"service": "C-FIND", "sop_class_uid": STUDY_ROOT_FIND,
                                                            "query": identifier.to_json()}))
    _schema_order(root)
    assert _participants(root)["GH_PACS"].get("AlternativeUserID") == "AETITLES=GH_PACS"
    obj = _objects(root)["110181"]
    assert obj.get("ParticipantObjectID") == STUDY_ROOT_FIND
    assert _code(obj.find("ParticipantObjectIDTypeCode")) == ("110181", "DCM", "SOP Class UID")
    detail = obj.find("ParticipantObjectDetail")
    assert detail is not None and detail.get("type") == "TransferSyntax"
    assert base64.b64decode(detail.get("value", "")) == b"1.2.840.10008.1.2.1"  # Explicit VR Little Endian
    sent = read_dataset(BytesIO(base64.b64decode(obj.findtext("ParticipantObjectQuery") or "")),
                        is_implicit_VR=False, is_little_endian=True)
    assert (sent.QueryRetrieveLevel, sent.PatientID, sent.StudyDate) == ("STUDY", "PAT-1", "20260101-")
    assert "2" in _objects(root)  # the patient the query named

    truncated = identifier.to_json()[:40]  # recorded identifiers are capped: the text goes out as recorded
    root = _message(ctx, Event(Action.QUERY, actor_type="node", actor="GH_PACS", source="192.0.2.10",
                               details={"sop_class_uid": STUDY_ROOT_FIND, "query": truncated}))
    obj = _objects(root)["110181"]
    assert base64.b64decode(obj.findtext("ParticipantObjectQuery") or "") == truncated.encode()
    detail = obj.find("ParticipantObjectDetail")
    assert detail is not None and detail.get("type") == "QueryEncoding"


def test_login_failure_and_logout_are_user_authentication(ctx: Context) -> None:
    root = _message(ctx, Event(Action.LOGIN, outcome=MINOR_FAILURE, actor_type="user", actor="mallory",
                               source="198.51.100.9", details={"reason": "bad password"}))
    _schema_order(root)
    event = root.find("EventIdentification")
    assert event is not None
    assert _code(event.find("EventID")) == ("110114", "DCM", "User Authentication")
    assert [_code(t) for t in event.findall("EventTypeCode")] == [("110122", "DCM", "Login")]
    assert event.get("EventOutcomeIndicator") == "4"
    assert event.findtext("EventOutcomeDescription") == "bad password"
    assert _participants(root)["mallory"].get("UserIsRequestor") == "true"
    assert root.find("ParticipantObjectIdentification") is None

    root = _message(ctx, Event(Action.LOGOUT, actor_type="user", actor="mallory", source="198.51.100.9"))
    event = root.find("EventIdentification")
    assert event is not None
    assert [_code(t)[0] for t in event.findall("EventTypeCode")] == ["110123"]


@pytest.mark.parametrize(("action", "details", "type_codes"), [
    (Action.BREAK_GLASS, {"reason": "trauma bay 2", "until": "2026-01-01T00:00:00Z"}, ["110127"]),
    (Action.NODE_REJECTED, {"reason": "unknown calling AE"}, ["110126"]),
    (Action.ACCESS_DENIED, {"method": "GET", "path": "/api/users", "reason": "admin role required"}, ["110132"]),
    (Action.USER_CHANGE, {"change": "updated", "user": "alice", "roles": ["radiologist"]}, ["110137", "110136"]),
    (Action.USER_CHANGE, {"change": "totp reset", "user": "alice"}, ["110137"]),
    (Action.TOKEN_CHANGE, {"change": "revoked", "token": "tok_1", "user": "alice"}, ["110137"]),
    (Action.SITE_CHANGE, {"change": "created", "name": "General Hospital"}, ["110129"]),
])
def test_security_alerts(ctx: Context, action: str, details: dict[str, object], type_codes: list[str]) -> None:
    actor_type = "node" if action == Action.NODE_REJECTED else "user"
    root = _message(ctx, Event(action, outcome=MINOR_FAILURE if action != Action.SITE_CHANGE else 0,
                               actor_type=actor_type, actor="STRANGER" if actor_type == "node" else "admin",
                               source="203.0.113.4", site_code="GH", details=details))
    _schema_order(root)
    event = root.find("EventIdentification")
    assert event is not None
    assert _code(event.find("EventID")) == ("110113", "DCM", "Security Alert")
    assert event.get("EventActionCode") == "E"
    assert [_code(t)[0] for t in event.findall("EventTypeCode")] == type_codes
    people = _participants(root)
    assert AE in people
    actor = people["STRANGER" if actor_type == "node" else "admin"]
    # a refused party performs, it does not request (A.5.3.14); an administrator's change is requested
    refused = action in (Action.NODE_REJECTED, Action.ACCESS_DENIED)
    assert actor.get("UserIsRequestor") == ("false" if refused else "true")
    (subject,) = root.findall("ParticipantObjectIdentification")
    assert subject.get("ParticipantObjectTypeCode") == "2"
    detail = subject.find("ParticipantObjectDetail")
    assert detail is not None and detail.get("type") == "Alert Description"
    text = base64.b64decode(detail.get("value", "")).decode()
    assert str(details.get("reason") or details["change"]) in text
    if action == Action.NODE_REJECTED:
        assert _code(subject.find("ParticipantObjectIDTypeCode"))[0] == "110182"
        assert subject.get("ParticipantObjectID") == "203.0.113.4"
    if action == Action.ACCESS_DENIED:
        assert _code(subject.find("ParticipantObjectIDTypeCode")) == ("12", "RFC-3881", "URI")
        assert subject.get("ParticipantObjectID") == "/api/users"
    if action in (Action.USER_CHANGE, Action.TOKEN_CHANGE):
        assert subject.get("ParticipantObjectID") == "alice"


def test_break_glass_names_the_patient(ctx: Context) -> None:
    root = _message(ctx, Event(Action.BREAK_GLASS, actor_type="user", actor="dr.who", source="10.0.0.1",
                               patient_id="PAT-9", patient_name="Roe^Richard", study_uid="1.2.9",
                               details={"reason": "emergency"}))
    objects = _objects(root)
    assert {"110180", "2"} <= set(objects)
    assert objects["2"].findtext("ParticipantObjectName") == "Roe^Richard"


def test_application_activity_and_audit_log_used(ctx: Context) -> None:
    root = _message(ctx, Event(Action.APPLICATION_START, actor_type="system", actor="telerad-serve", source="cli"))
    _schema_order(root)
    event = root.find("EventIdentification")
    assert event is not None
    assert _code(event.find("EventID")) == ("110100", "DCM", "Application Activity")
    assert [_code(t) for t in event.findall("EventTypeCode")] == [("110120", "DCM", "Application Start")]
    people = _participants(root)
    assert _code(people[AE].find("RoleIDCode")) == ("110150", "DCM", "Application")
    assert _code(people["telerad-serve"].find("RoleIDCode")) == ("110151", "DCM", "Application Launcher")
    assert people["telerad-serve"].get("NetworkAccessPointID") is None  # "cli" is no network address

    root = _message(ctx, Event(Action.APPLICATION_STOP, actor="telerad-serve"))
    event = root.find("EventIdentification")
    assert event is not None
    assert [_code(t)[0] for t in event.findall("EventTypeCode")] == ["110121"]

    root = _message(ctx, Event(Action.AUDIT_ACCESS, actor_type="user", actor="auditor", source="10.9.9.9",
                               details={"patient_id": "PAT-1", "matched": 3}))
    _schema_order(root)
    event = root.find("EventIdentification")
    assert event is not None
    assert _code(event.find("EventID")) == ("110101", "DCM", "Audit Log Used")
    assert event.get("EventActionCode") == "R"
    (log_object,) = root.findall("ParticipantObjectIdentification")
    assert (log_object.get("ParticipantObjectTypeCode"), log_object.get("ParticipantObjectTypeCodeRole")) == ("2",
                                                                                                             "13")
    assert log_object.findtext("ParticipantObjectName") == "Security Audit Log"


def test_export_and_unknown_actions(ctx: Context) -> None:
    root = _message(ctx, Event(Action.EXPORT, actor_type="user", actor="dr.house", source="10.1.2.3",
                               patient_id="PAT-1", study_uid="1.2.3.4", details={"destination": "usb-0042"}))
    _schema_order(root)
    event = root.find("EventIdentification")
    assert event is not None
    assert _code(event.find("EventID")) == ("110106", "DCM", "Export")
    assert _code(_participants(root)["usb-0042"].find("RoleIDCode"))[0] == "110154"

    root = _message(ctx, Event("report.sign", actor="dr.house"))  # no DICOM message yet: still exported
    _schema_order(root)
    event = root.find("EventIdentification")
    assert event is not None
    assert _code(event.find("EventID")) == ("report.sign", "99TELERAD", "report.sign")


def test_hostile_text_is_escaped_and_stays_well_formed(ctx: Context) -> None:
    nasty = 'x"/><Injected a="1">&amp;\x01\x1b]0;'
    root = _message(ctx, Event(Action.RETRIEVE, actor_type="user", actor=nasty, source="10.0.0.1",
                               patient_id="P<1>", patient_name='O\'Brien^"Pat"&Co', study_uid="1.2"))
    assert root.find(".//Injected") is None
    people = _participants(root)
    assert 'x"/><Injected a="1">&amp;\ufffd\ufffd]0;' in people
    assert _objects(root)["2"].get("ParticipantObjectID") == "P<1>"
    assert _objects(root)["2"].findtext("ParticipantObjectName") == 'O\'Brien^"Pat"&Co'
