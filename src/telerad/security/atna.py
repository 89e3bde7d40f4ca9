"""Audit records as DICOM audit messages (DICOM PS3.15 A.5, the "AuditMessage" schema; IHE ITI ATNA).

:func:`to_audit_message` turns one row of the audit trail (:class:`telerad.db.models.AuditEvent`) into the XML
an Audit Record Repository expects over syslog (IHE ITI-20, see :mod:`telerad.security.syslog`). Each action
(:class:`telerad.security.audit.Action`) maps to its PS3.15 A.5.3 message:

=====================  ===========================================================================
action                 message (EventID, EventTypeCode, EventActionCode)
=====================  ===========================================================================
application.start/stop A.5.3.1 Application Activity 110100; 110120 Application Start / 110121 Stop; E
login / logout         A.5.3.17 User Authentication 110114; 110122 Login / 110123 Logout; E
query                  A.5.3.13 Query 110112; E
store                  A.5.3.5 DICOM Instances Transferred 110104; C (received, new instances)
retrieve               A.5.3.5 DICOM Instances Transferred 110104; R (sent)
export                 A.5.3.8 Export 110106; R
access.denied          A.5.3.14 Security Alert 110113; 110132 Use of Restricted Function; E
node.rejected          A.5.3.14 Security Alert 110113; 110126 Node Authentication; E
break_glass            A.5.3.14 Security Alert 110113; 110127 Emergency Override Started; E
user.change            A.5.3.14 Security Alert 110113; 110137 User Security Attributes Changed
                       (+ 110136 Security Roles Changed when roles or site memberships were set); E
token.change           A.5.3.14 Security Alert 110113; 110137 User Security Attributes Changed; E
site.change            A.5.3.14 Security Alert 110113; 110129 Security Configuration; E
audit.access           A.5.3.2 Audit Log Used 110101; R
=====================  ===========================================================================

Codes are from PS3.16 CID 400 (Audit Event ID), CID 401 (Audit Event Type Code), CID 402 (Audit Active
Participant Role ID Code) and CID 403 (Audit Participant Object ID Type Code), coding scheme "DCM". A patient
is a participant object of type 1 (person), role 1 (patient), ID type (2, RFC-3881, "Patient Number"); a
study is type 2 (system object), role 3 (report), ID type (110180, DCM, "Study Instance UID").

Elements follow the order of the PS3.15 A.5.1 schema: EventIdentification, ActiveParticipant+,
AuditSourceIdentification, ParticipantObjectIdentification*; inside a participant object:
ParticipantObjectIDTypeCode, ParticipantObjectName or ParticipantObjectQuery, ParticipantObjectDetail*.
Text from the record is stripped of characters XML 1.0 cannot carry; the query itself travels base64-encoded
(xsd:base64Binary), byte for byte.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Any

from pydicom import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset

from telerad.db.models import AuditEvent
from telerad.security.audit import Action


@dataclass(frozen=True)
class Code:
    """A coded value (PS3.15 A.5.1 CodedValueType): csd-code, codeSystemName, originalText (Code Meaning)."""

    code: str
    system: str
    meaning: str


def _dcm(code: str, meaning: str) -> Code:
    return Code(code, "DCM", meaning)


# PS3.16 CID 400 Audit Event ID
APPLICATION_ACTIVITY = _dcm("110100", "Application Activity")
AUDIT_LOG_USED = _dcm("110101", "Audit Log Used")
INSTANCES_TRANSFERRED = _dcm("110104", "DICOM Instances Transferred")
EXPORT = _dcm("110106", "Export")
QUERY = _dcm("110112", "Query")
SECURITY_ALERT = _dcm("110113", "Security Alert")
USER_AUTHENTICATION = _dcm("110114", "User Authentication")

# PS3.16 CID 401 Audit Event Type Code
APPLICATION_START = _dcm("110120", "Application Start")
APPLICATION_STOP = _dcm("110121", "Application Stop")
LOGIN = _dcm("110122", "Login")
LOGOUT = _dcm("110123", "Logout")
NODE_AUTHENTICATION = _dcm("110126", "Node Authentication")
EMERGENCY_OVERRIDE_STARTED = _dcm("110127", "Emergency Override Started")
SECURITY_CONFIGURATION = _dcm("110129", "Security Configuration")
USE_OF_RESTRICTED_FUNCTION = _dcm("110132", "Use of Restricted Function")
SECURITY_ROLES_CHANGED = _dcm("110136", "Security Roles Changed")
USER_SECURITY_ATTRIBUTES_CHANGED = _dcm("110137", "User Security Attributes Changed")

# PS3.16 CID 402 Audit Active Participant Role ID Code
ROLE_APPLICATION = _dcm("110150", "Application")
ROLE_APPLICATION_LAUNCHER = _dcm("110151", "Application Launcher")
ROLE_DESTINATION = _dcm("110152", "Destination Role ID")
ROLE_SOURCE = _dcm("110153", "Source Role ID")
ROLE_DESTINATION_MEDIA = _dcm("110154", "Destination Media")

# PS3.16 CID 403 Audit Participant Object ID Type Code, and the RFC 3881 codes PS3.15 A.5.1.2.4 keeps
STUDY_INSTANCE_UID = _dcm("110180", "Study Instance UID")
SOP_CLASS_UID = _dcm("110181", "SOP Class UID")
NODE_ID = _dcm("110182", "Node ID")
PATIENT_NUMBER = Code("2", "RFC-3881", "Patient Number")
USER_IDENTIFIER = Code("11", "RFC-3881", "User Identifier")
URI = Code("12", "RFC-3881", "URI")
# Local code ("99" prefix: a private coding scheme, PS3.16 8.2) for a telerad site, the tenant of a record
SITE_CODE = Code("site", "99TELERAD", "Site code")

# Audit Source Type Code (PS3.15 A.5.1.2.1): 4 = application server process tier in a multi-tier system
_SOURCE_TYPE = "4"
_SOURCE_TYPE_MEANING = "Application server process tier in a multi-tier system"

# Participant object type codes and roles (PS3.15 A.5.1.2.2)
_PERSON, _SYSTEM = "1", "2"
_ROLE_PATIENT, _ROLE_REPORT, _ROLE_SECURITY_USER, _ROLE_SECURITY_RESOURCE = "1", "3", "11", "13"

EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"

_DECLARATION = b'<?xml version="1.0" encoding="UTF-8"?>'
_INVALID_XML = re.compile("[^\u0009\u000a\u000d\u0020-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _text(value: object) -> str:
    """``value`` as text XML 1.0 can carry (control characters and lone surrogates become U+FFFD)."""
    return _INVALID_XML.sub("\ufffd", str(value))


def _coded(parent: ET.Element, tag: str, code: Code) -> ET.Element:
    return ET.SubElement(parent, tag, {"csd-code": code.code, "codeSystemName": code.system,
                                       "originalText": code.meaning})


def _access_point(address: str) -> tuple[str, str] | None:
    """NetworkAccessPointID and its type code: 2 for an IP address, 1 for a machine name (A.5.1)."""
    if not address or address == "cli":
        return None
    try:
        ipaddress.ip_address(address)
    except ValueError:
        return address, "1"
    return address, "2"


def _details(row: AuditEvent) -> dict[str, Any]:
    try:
        value = json.loads(row.details or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


class _Message:
    """Builds one AuditMessage; participants and objects are kept apart so the schema's order holds."""

    def __init__(self, row: AuditEvent, ae_title: str, host: str) -> None:
        self.row = row
        self.ae_title = ae_title
        self.host = host
        self.details = _details(row)
        self.root = ET.Element("AuditMessage")
        self.event = ET.SubElement(self.root, "EventIdentification")
        self.participants: list[ET.Element] = []
        self.objects: list[ET.Element] = []

    # -- EventIdentification --------------------------------------------------------------------------------
    def identify(self, event_id: Code, action_code: str, *types: Code) -> None:
        self.event.set("EventActionCode", action_code)
        self.event.set("EventDateTime", _text(self.row.at))
        self.event.set("EventOutcomeIndicator", str(self.row.outcome))
        _coded(self.event, "EventID", event_id)
        for t in types:
            _coded(self.event, "EventTypeCode", t)
        reason = self.details.get("reason")
        if reason and self.row.outcome != 0:
            ET.SubElement(self.event, "EventOutcomeDescription").text = _text(reason)

    # -- ActiveParticipant ----------------------------------------------------------------------------------
    def participant(self, user_id: str, requestor: bool, role: Code | None = None, *, access_point: str = "",
                    alternative: str = "") -> None:
        p = ET.Element("ActiveParticipant", {"UserID": _text(user_id or "unknown")})
        if role is not None:
            _coded(p, "RoleIDCode", role)
        if alternative:
            p.set("AlternativeUserID", _text(alternative))
        p.set("UserIsRequestor", "true" if requestor else "false")
        point = _access_point(access_point)
        if point is not None:
            p.set("NetworkAccessPointID", _text(point[0]))
            p.set("NetworkAccessPointTypeCode", point[1])
        self.participants.append(p)

    def actor(self, requestor: bool, role: Code | None = None) -> None:
        """The person, token or node the record names (``actor``, reached from ``source``)."""
        row = self.row
        user_id = row.actor or (row.source if row.source not in ("", "cli") else "") or row.actor_type
        node = row.actor_type == "node" and row.actor  # a DICOM node: its AE title (A.5.2.2)
        self.participant(user_id, requestor, role, access_point=row.source,
                         alternative=f"AETITLES={row.actor}" if node else "")

    def application(self, requestor: bool, role: Code | None = None) -> None:
        """This telerad process, named by its AE title (PS3.15 A.5.2.2: ``AETITLES=``), reached at ``host``."""
        self.participant(self.ae_title, requestor, role, access_point=self.host,
                         alternative=f"AETITLES={self.ae_title}")

    # -- ParticipantObjectIdentification --------------------------------------------------------------------
    def obj(self, object_id: str, type_code: str, role: str, id_type: Code, *, name: str = "",
            query: bytes | None = None, details: list[tuple[str, str]] | None = None) -> None:
        o = ET.Element("ParticipantObjectIdentification",
                       {"ParticipantObjectID": _text(object_id), "ParticipantObjectTypeCode": type_code,
                        "ParticipantObjectTypeCodeRole": role})
        _coded(o, "ParticipantObjectIDTypeCode", id_type)
        if query is not None:
            ET.SubElement(o, "ParticipantObjectQuery").text = base64.b64encode(query).decode("ascii")
        elif name:
            ET.SubElement(o, "ParticipantObjectName").text = _text(name)
        for kind, value in details or []:
            ET.SubElement(o, "ParticipantObjectDetail",
                          {"type": kind, "value": base64.b64encode(value.encode()).decode("ascii")})
        self.objects.append(o)

    def study_and_patient(self) -> None:
        """Study (A.5.3.5: type 2, role 3, 110180) and patient (type 1, role 1, RFC-3881 2) where known."""
        row = self.row
        if row.study_uid:
            self.obj(row.study_uid, _SYSTEM, _ROLE_REPORT, STUDY_INSTANCE_UID)
        if row.patient_id:
            self.obj(row.patient_id, _PERSON, _ROLE_PATIENT, PATIENT_NUMBER, name=row.patient_name)

    # -- output -----------------------------------------------------------------------------------------------
    def finish(self) -> bytes:
        if not self.participants:
            self.application(False)
        self.root.extend(self.participants)
        source = ET.SubElement(self.root, "AuditSourceIdentification", {"AuditSourceID": _text(self.ae_title)})
        ET.SubElement(source, "AuditSourceTypeCode", {"csd-code": _SOURCE_TYPE, "codeSystemName": "DCM",
                                                      "originalText": _SOURCE_TYPE_MEANING})
        self.root.extend(self.objects)
        return _DECLARATION + ET.tostring(self.root, encoding="unicode").encode("utf-8")


def _alert_description(details: dict[str, Any]) -> str:
    """Free text for the "Alert Description" detail (A.5.3.14): the reason, else the recorded details."""
    reason = details.get("reason")
    if isinstance(reason, str) and reason:
        return reason
    return json.dumps(details, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def _identifier_bytes(query_json: str) -> bytes | None:
    """A C-FIND Identifier recorded as DICOM JSON (PS3.18 F.2), encoded in Explicit VR Little Endian."""
    try:
        dataset = Dataset.from_json(query_json)
        fp = DicomBytesIO()
        fp.is_little_endian = True
        fp.is_implicit_VR = False
        write_dataset(fp, dataset)
        return fp.getvalue()
    except Exception:  # truncated or malformed JSON: the caller sends the text as recorded
        return None


def _query_uri(details: dict[str, Any]) -> tuple[str, bytes]:
    """The resource a QIDO-RS request queried and the request target as sent (path and query string)."""
    path = str(details.get("path") or "")
    query = str(details.get("query") or "")
    target = f"{path}?{query}" if query else path
    return path or "/", target.encode()


def _application_activity(m: _Message) -> None:
    """A.5.3.1: the application started or stopped (110150), and who launched it (110151)."""
    start = m.row.action == Action.APPLICATION_START
    m.identify(APPLICATION_ACTIVITY, "E", APPLICATION_START if start else APPLICATION_STOP)
    m.application(False, ROLE_APPLICATION)
    if m.row.actor:
        m.actor(True, ROLE_APPLICATION_LAUNCHER)


def _user_authentication(m: _Message) -> None:
    """A.5.3.17: the person authenticated (requestor) and the node that authenticated them."""
    m.identify(USER_AUTHENTICATION, "E", LOGIN if m.row.action == Action.LOGIN else LOGOUT)
    m.actor(True)
    m.application(False)


def _query(m: _Message) -> None:
    """A.5.3.13: the querying process (110153 Source) and the responder (110152 Destination); the query.

    A C-FIND names its SOP Class (110181) and the query is its Identifier dataset, which the DIMSE adapter
    records as DICOM JSON (``sop_class_uid``, ``query``) and which is re-encoded here in Explicit VR Little
    Endian, the TransferSyntax detail naming that; an Identifier too long to have been recorded whole goes
    out as the recorded JSON, marked ``QueryEncoding: application/dicom+json``. A QIDO-RS request is a
    non-DICOM query (A.5.3.13 note 2): its object is the queried resource as a URI and the query is the
    request target, path and query string, as the protocol carried it.
    """
    m.identify(QUERY, "E")
    m.actor(True, ROLE_SOURCE)
    m.application(False, ROLE_DESTINATION)
    d = m.details
    sop_class = d.get("sop_class_uid")
    if isinstance(sop_class, str) and sop_class:
        recorded = str(d.get("query") or "{}")
        dataset = _identifier_bytes(recorded)
        if dataset is not None:
            m.obj(sop_class, _SYSTEM, _ROLE_REPORT, SOP_CLASS_UID, query=dataset,
                  details=[("TransferSyntax", EXPLICIT_VR_LITTLE_ENDIAN)])
        else:
            m.obj(sop_class, _SYSTEM, _ROLE_REPORT, SOP_CLASS_UID, query=recorded.encode(),
                  details=[("QueryEncoding", "application/dicom+json")])
    else:
        resource, target = _query_uri(d)
        m.obj(resource, _SYSTEM, _ROLE_REPORT, URI, query=target)
    m.study_and_patient()


def _instances_transferred(m: _Message) -> None:
    """A.5.3.5: store = this node received new instances (C); retrieve = it sent them (R)."""
    if m.row.action == Action.STORE:
        m.identify(INSTANCES_TRANSFERRED, "C")
        m.actor(True, ROLE_SOURCE)
        m.application(False, ROLE_DESTINATION)
    else:
        m.identify(INSTANCES_TRANSFERRED, "R")
        m.application(False, ROLE_SOURCE)
        m.actor(True, ROLE_DESTINATION)
    m.study_and_patient()


def _export(m: _Message) -> None:
    """A.5.3.8: data leaves the system's control: the requesting user, this node as source, the destination."""
    m.identify(EXPORT, "R")
    m.actor(True)
    m.application(False, ROLE_SOURCE)
    destination = m.details.get("destination")
    if isinstance(destination, str) and destination:
        m.participant(destination, False, ROLE_DESTINATION_MEDIA)
    m.study_and_patient()


_ALERT_TYPES: dict[str, tuple[Code, ...]] = {
    Action.ACCESS_DENIED: (USE_OF_RESTRICTED_FUNCTION,),
    Action.NODE_REJECTED: (NODE_AUTHENTICATION,),
    Action.BREAK_GLASS: (EMERGENCY_OVERRIDE_STARTED,),
    Action.USER_CHANGE: (USER_SECURITY_ATTRIBUTES_CHANGED,),
    Action.TOKEN_CHANGE: (USER_SECURITY_ATTRIBUTES_CHANGED,),
    Action.SITE_CHANGE: (SECURITY_CONFIGURATION,),
}
_ROLE_KEYS = ("roles", "sites")  # a user's roles or site memberships were set (security.users)


def _security_alert(m: _Message) -> None:
    """A.5.3.14: reporting and performing participants, the alert subject with an "Alert Description".

    Detected refusals (access denied, node rejected) are reported by this application, and the refused party
    is a performing participant (UserIsRequestor false, as A.5.3.14 requires). Changes a person asked for
    (user, token, site settings, break-glass) are reported by that person, the requestor.
    """
    row, d = m.row, m.details
    types: tuple[Code, ...] = _ALERT_TYPES[row.action]
    if row.action == Action.USER_CHANGE and any(key in d for key in _ROLE_KEYS):
        types = (*types, SECURITY_ROLES_CHANGED)
    m.identify(SECURITY_ALERT, "E", *types)
    description = [("Alert Description", _alert_description(d))]
    if row.action in (Action.ACCESS_DENIED, Action.NODE_REJECTED):
        m.application(False)
        m.actor(False)
    else:
        m.actor(True)
        m.application(False)
    if row.action == Action.ACCESS_DENIED:
        m.obj(str(d.get("path") or "/"), _SYSTEM, _ROLE_SECURITY_RESOURCE, URI, details=description)
    elif row.action == Action.NODE_REJECTED:
        node = row.source if row.source not in ("", "cli") else row.actor
        m.obj(node or "unknown", _SYSTEM, _ROLE_SECURITY_RESOURCE, NODE_ID, name=row.actor, details=description)
    elif row.action == Action.SITE_CHANGE:
        m.obj(row.site_code or str(row.site_id or ""), _SYSTEM, _ROLE_SECURITY_RESOURCE, SITE_CODE,
              details=description)
    else:  # break-glass, user and token changes: the user whose rights changed
        user = d.get("user")
        subject = user if isinstance(user, str) and user else row.actor
        m.obj(subject, _SYSTEM, _ROLE_SECURITY_USER, USER_IDENTIFIER, details=description)
    m.study_and_patient()


def _audit_log_used(m: _Message) -> None:
    """A.5.3.2: who read the audit trail, and the audit log itself (type 2, role 13, URI)."""
    m.identify(AUDIT_LOG_USED, "R")
    m.actor(True)
    m.application(False)
    uri = "/api/audit/verify" if "verify" in m.details else "/api/audit"
    m.obj(uri, _SYSTEM, _ROLE_SECURITY_RESOURCE, URI, name="Security Audit Log")


def _other(m: _Message) -> None:
    """An action this module does not know yet: a local event code, so nothing is dropped or stalls."""
    m.identify(Code(m.row.action, "99TELERAD", m.row.action), "E")
    m.actor(True)
    m.application(False)
    m.study_and_patient()


_BUILDERS = {
    Action.APPLICATION_START: _application_activity,
    Action.APPLICATION_STOP: _application_activity,
    Action.LOGIN: _user_authentication,
    Action.LOGOUT: _user_authentication,
    Action.QUERY: _query,
    Action.STORE: _instances_transferred,
    Action.RETRIEVE: _instances_transferred,
    Action.EXPORT: _export,
    Action.AUDIT_ACCESS: _audit_log_used,
    **{action: _security_alert for action in _ALERT_TYPES},
}


def event_id(action: str) -> Code | None:
    """The PS3.16 CID 400 EventID an action maps to (None for an action without a DICOM message)."""
    return {
        Action.APPLICATION_START: APPLICATION_ACTIVITY, Action.APPLICATION_STOP: APPLICATION_ACTIVITY,
        Action.LOGIN: USER_AUTHENTICATION, Action.LOGOUT: USER_AUTHENTICATION, Action.QUERY: QUERY,
        Action.STORE: INSTANCES_TRANSFERRED, Action.RETRIEVE: INSTANCES_TRANSFERRED, Action.EXPORT: EXPORT,
        Action.AUDIT_ACCESS: AUDIT_LOG_USED,
    }.get(action) or (SECURITY_ALERT if action in _ALERT_TYPES else None)


def to_audit_message(row: AuditEvent, *, ae_title: str, host: str) -> bytes:
    """The DICOM audit message (PS3.15 A.5) for one audit record, as UTF-8 XML with an XML declaration.

    ``ae_title`` names this application (ActiveParticipant UserID, AuditSourceID); ``host`` is the machine
    it runs on (NetworkAccessPointID: type 2 for an IP address, 1 for a name).
    """
    m = _Message(row, ae_title, host)
    _BUILDERS.get(row.action, _other)(m)
    return m.finish()
