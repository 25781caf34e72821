"""A de-identified copy of a DICOM instance by the PS3.15 Annex E basic confidentiality profile.

Which attribute gets which action is not written here: it is Table E.1-1 as shipped by
``dicom-anonymizer`` (KitwareMedical, module ``dicomanonymizer``), whose
``dicom_anonymization_databases`` hold the table per edition of the standard, one list per
action (D, Z, X, U and the combinations Z/D, X/Z, X/D, X/Z/D, X/Z/U*). Of the candidates it is
the one whose list *is* the standard's: ``dicognito`` replaces values by VR and keyword (every
PN, UI, date...) with plausible fakes and keeps no table; ``deid`` applies a recipe of its own
(Stanford's ``deid.dicom``), not Table E.1-1. Its 2026c list agrees, attribute by attribute and
action by action, with idiscore's independent transcription of the 2024 table (the unit tests
check against that one), adding the 33 attributes the standard added since.

Only the list is taken from it. Its ``anonymize_dataset`` maps UIDs through a process-wide dict
of random UIDs (different after a restart, and growing forever in a long-lived gateway), acts on
top-level attributes only (a Referenced SOP Instance UID inside a sequence keeps its old value
while the SOP Instance UID it points to changes), turns X on dates into a dummy date, and writes
dummies over every element of a D sequence, SOP Class UIDs included. So here:

* private attributes are removed first, everywhere (the profile's default);
* every data set, and every item of every sequence, is walked; each attribute gets its action
  from the table, and one that the table does not name is kept (K) and, if a sequence, cleaned;
* the combinations resolve as the library resolves them, to what keeps a Type 1 or Type 2
  attribute conformant without knowing the IOD: Z/D, X/D, X/Z/D -> D; X/Z -> Z; X/Z/U* ->
  the sequence is kept and the instance UIDs in it are replaced (each by its own U entry);
* X removes; Z leaves the attribute with a zero-length value (an empty sequence for SQ);
  D puts a dummy of the VR (``ANONYMIZED``, ``19000101``, ``0``...), and for a sequence puts a
  dummy into every element of its items, except UIDs, which are replaced if the table says U
  and otherwise kept (class and coding scheme UIDs identify nobody);
* U maps each UID through ``generate_uid(PREFIX, entropy_srcs=[HMAC-SHA256(secret, uid)])``:
  the same UID and secret give the same new UID in any process, and without the secret the
  old UID cannot be recovered or tested for. SOP Class and Transfer Syntax UIDs are not in the
  table and stay. Media Storage SOP Instance UID is set to the new SOP Instance UID;
* retired group lengths (gggg,0000) outside the file meta are dropped: they would be wrong;
* Patient Identity Removed YES, De-identification Method (text) and De-identification Method
  Code Sequence (DCM 113100) are added, after any earlier ones.

Pixel data is not touched, nor examined: burned-in text (Burned In Annotation YES) needs the
Clean Pixel Data option, which this does not claim. Nothing here logs, and errors name the
failing tag and exception type, never a value.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Final, Literal

from dicomanonymizer.dicomfields_selector import dicom_anonymization_database_selector
from pydicom import dcmread
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag, Tag
from pydicom.uid import (
    PYDICOM_ROOT_UID,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    generate_uid,
)

from shared.dicom import quiet_pydicom
from shared.errors import PermanentError
from shared.files import atomic_file

TABLE: Final = "dicomfields_2026c"  # the newest edition dicom-anonymizer 2.1 ships
PREFIX: Final = PYDICOM_ROOT_UID  # root for the new UIDs ("1.2.826.0.1.3680043.8.498.")
PROFILE_CODE: Final = ("113100", "DCM", "Basic Application Confidentiality Profile")

Action = Literal["D", "Z", "X", "U", "U*"]
# The library's lists, and the action each resolves to (see the module docstring).
_ACTION_OF_LIST: Final[dict[str, Action]] = {
    "D_TAGS": "D",
    "Z_TAGS": "Z",
    "X_TAGS": "X",
    "U_TAGS": "U",
    "Z_D_TAGS": "D",
    "X_Z_TAGS": "Z",
    "X_D_TAGS": "D",
    "X_Z_D_TAGS": "D",
    "X_Z_U_STAR_TAGS": "U*",
}
_DUMMY_TEXT: Final = "ANONYMIZED"  # at most 16 characters: fits AE, CS and SH
DUMMIES: Final[dict[str, Any]] = {
    **dict.fromkeys(("AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UT"), _DUMMY_TEXT),
    "AS": "000Y",
    "DA": "19000101",
    "DT": "19000101000000",
    "TM": "000000",
    "DS": "0",
    "IS": "0",
    "UR": "http://anonymized.invalid",
    **dict.fromkeys(("FL", "FD", "SL", "SS", "UL", "US", "SV", "UV", "AT"), 0),
    **dict.fromkeys(("OB", "OW", "UN"), b"\x00\x00"),
    **dict.fromkeys(("OF", "OL"), b"\x00" * 4),
    **dict.fromkeys(("OD", "OV"), b"\x00" * 8),
}


class DeidentificationError(PermanentError):
    """The data set could not be de-identified; the message holds no value from it.

    A PermanentError: the same file fails the same way every time, and ``safe_error`` keeps
    this message (ours) in logs and job records.
    """


@dataclass(frozen=True)
class _Profile:
    single: dict[int, Action]
    masked: tuple[tuple[int, int, Action], ...]  # (tag & mask == value): repeating groups

    def action(self, tag: BaseTag) -> Action | None:
        if (found := self.single.get(int(tag))) is not None:
            return found
        return next((a for mask, value, a in self.masked if int(tag) & mask == value), None)


@functools.cache
def _profile() -> _Profile:
    lists = dicom_anonymization_database_selector(TABLE)
    single: dict[int, Action] = {}
    masked: list[tuple[int, int, Action]] = []
    for name, action in _ACTION_OF_LIST.items():
        for entry in lists[name]:
            if len(entry) == 2:
                single[int(Tag(entry))] = action
            else:  # (group, element, group mask, element mask), e.g. 60xx,3000 Overlay Data
                group, element, group_mask, element_mask = entry
                mask = group_mask << 16 | element_mask
                masked.append((mask, (group << 16 | element) & mask, action))
    return _Profile(single, tuple(masked))


def _method_text() -> list[str]:
    try:
        version = metadata.version("dicom-anonymizer")
    except metadata.PackageNotFoundError:  # pragma: no cover - installed with this module
        version = "?"
    return [
        "PS3.15 E.1 Basic Application Level Confidentiality Profile",
        f"Table E.1-1 of dicom-anonymizer {version} {TABLE}",
        "dicomflow: private removed, UIDs replaced by keyed hash",
    ]


def deidentify(ds: Dataset, secret: bytes) -> None:
    """De-identify ds in place by the basic profile; UIDs are replaced as a function of secret."""
    with quiet_pydicom():
        _deidentify(ds, secret)


def write_deidentified(source: Path, dest: Path, secret: bytes) -> None:
    """Read source, de-identify it and write dest atomically, in the same transfer syntax."""
    with quiet_pydicom():
        try:
            ds = dcmread(source)
        except OSError:
            raise  # the disk's problem (missing, unreadable), not the file's: worth a retry
        except Exception as exc:
            raise DeidentificationError(
                f"the source is not a readable DICOM file ({type(exc).__name__})"
            ) from None
        _deidentify(ds, secret)
        _write_atomic(ds, dest)


def _deidentify(ds: Dataset, secret: bytes) -> None:
    if not secret:
        raise ValueError("a secret is needed to replace UIDs")
    uids = _UidMap(secret)
    walker = _Walker(_profile(), uids)
    try:
        ds.remove_private_tags()
        walker.clean(ds)
        meta = getattr(ds, "file_meta", None)
        if meta is not None:
            walker.clean(meta)
            if "SOPInstanceUID" in ds:
                meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        _mark(ds)
    except Exception as exc:
        where = f" at {walker.at}" if walker.at is not None else ""
        raise DeidentificationError(
            f"could not de-identify the data set{where} ({type(exc).__name__})"
        ) from None


class _UidMap:
    """One UID to its replacement: HMAC-SHA256 keyed by the secret, through generate_uid."""

    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    def __call__(self, uid: str) -> str:
        uid = str(uid).strip("\x00 ")
        if not uid:
            return uid
        digest = hmac.new(self._secret, uid.encode("ascii", "replace"), hashlib.sha256)
        return str(generate_uid(prefix=PREFIX, entropy_srcs=[digest.hexdigest()]))


class _Walker:
    """Applies the profile to a data set and, recursively, to the items of its sequences."""

    def __init__(self, profile: _Profile, uids: _UidMap) -> None:
        self.profile = profile
        self.uids = uids
        self.at: BaseTag | None = None  # the tag being handled, for the error message

    def clean(self, ds: Dataset) -> None:
        for elem in list(ds):
            self.at = elem.tag
            action = self.profile.action(elem.tag)
            if elem.tag.element == 0 and elem.tag.group != 2:
                del ds[elem.tag]  # a retired group length, wrong once anything is removed
            elif action == "X":
                del ds[elem.tag]
            elif action == "Z":
                elem.value = [] if elem.VR == "SQ" else None
            elif elem.VR == "SQ":
                for item in elem.value:
                    if action == "D":
                        self.dummy_all(item)
                    else:  # K, U* or not named: cleaned
                        self.clean(item)
            elif action == "D":
                self.dummy(elem)
            elif action in ("U", "U*"):
                if elem.VR == "UI":
                    self.replace_uids(elem)
                else:
                    elem.value = None

    def dummy_all(self, ds: Dataset) -> None:
        """D on a sequence: a dummy in every element of the item, replaced UIDs where U."""
        for elem in list(ds):
            self.at = elem.tag
            if elem.VR == "SQ":
                for item in elem.value:
                    self.dummy_all(item)
            elif elem.VR == "UI":
                if self.profile.action(elem.tag) in ("U", "U*"):
                    self.replace_uids(elem)
            else:
                self.dummy(elem)

    def dummy(self, elem: DataElement) -> None:
        if elem.VR == "UI":
            self.replace_uids(elem)
        elif elem.VR in DUMMIES:
            elem.value = DUMMIES[elem.VR]
        else:  # an ambiguous VR ("US or SS") left unresolved: zero length is always valid
            elem.value = None

    def replace_uids(self, elem: DataElement) -> None:
        if elem.VM > 1:
            elem.value = [self.uids(uid) for uid in elem.value]
        elif not elem.is_empty:
            elem.value = self.uids(elem.value)


def _mark(ds: Dataset) -> None:
    """Say what was done, after anything an earlier de-identification said (PS3.15 E.1.1)."""
    ds.PatientIdentityRemoved = "YES"
    earlier = ds.get("DeidentificationMethod") or []
    if isinstance(earlier, str):
        earlier = [earlier]
    ds.DeidentificationMethod = [*earlier, *_method_text()]
    codes = ds.get("DeidentificationMethodCodeSequence") or Sequence()
    if not any(item.get("CodeValue") == PROFILE_CODE[0] for item in codes):
        item = Dataset()
        item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = PROFILE_CODE
        codes.append(item)
    ds.DeidentificationMethodCodeSequence = codes


def _write_atomic(ds: Dataset, dest: Path) -> None:
    """A Part 10 file in the transfer syntax it was read in: temporary name, fsync, rename."""
    if not (ds.get("SOPClassUID") and ds.get("SOPInstanceUID")):
        raise DeidentificationError("the data set has no SOP Class UID or SOP Instance UID")
    meta = getattr(ds, "file_meta", None) or FileMetaDataset()
    if "TransferSyntaxUID" not in meta:  # read without file meta: the encoding it was in
        implicit, little = ds.original_encoding
        if implicit:
            meta.TransferSyntaxUID = ImplicitVRLittleEndian
        elif little is False:
            meta.TransferSyntaxUID = ExplicitVRBigEndian
        else:
            meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    with atomic_file(dest) as f:
        try:
            ds.save_as(f, enforce_file_format=True)
        except Exception as exc:
            raise DeidentificationError(
                f"could not write the de-identified data set ({type(exc).__name__})"
            ) from None
