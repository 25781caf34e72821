"""The study, series and instance indexes' layout in Redis, and their removal: what the
query function (``shared.query``) reads instead of files.

The status service indexes each archived instance that is not a duplicate
(``status_service.indexes``); forgetting a job un-indexes its upload (``unindex``, from
``shared.jobs.JobStore.forget``, run by the gateway and the status service); the query
function (``shared.query``, for ``/studies``, QIDO-RS and C-FIND) answers from these keys
alone, normalising values as they were indexed.

Per study (key names in ``redis_names``): a hash of its attributes and counts, and hashes
counting its uploads by series, by SOP Instance UID and by modality, so series, instance and
modality counts stay right as uploads come and go. Indexes: exact-match sets per modality,
patient id, accession number and institution (values trimmed and case-folded, keys named by a
digest so no patient data is in a key name); a sorted set by study date and time (score
``YYYYMMDDhhmmss``, 0 for a study without a date: a date filter never matches it, and it sorts
as the oldest); a lexicographic sorted set of ``NAME \\0 uid`` (names trimmed, upper-cased,
trailing empty components dropped) for name prefixes; a sorted set by last change.
Per series: a hash of its attributes (modality, description, number, performed procedure
step start) and instance count, and a hash counting its uploads by SOP Instance UID. Per
instance (by SOP Instance UID): a hash of its study and series UIDs, SOP class and image
attributes. Series are listed from the study's series hash, instances from the series'.

Both writers (indexing, removal) are Lua scripts, so a search never sees a half-written
study, and both are idempotent: an upload is indexed once (a second run changes nothing) and
un-indexed once. Study-level attributes come from the instances: each newly indexed
instance's non-empty values replace the stored ones (a correction sent later wins; a missing
value never erases one), and removing an instance does not bring back older values.

The scripts name per-study and per-value keys from prefixes, so they need a single Redis (not a
cluster), as the rest of dicomflow does.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, date, datetime
from uuid import UUID

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from shared import redis_names as names
from shared.events import StudyKeys
from shared.lua import Lua

# hash field -> the set prefix of an exact-match index on it
EXACT_INDEXES: dict[str, str] = {
    "patient_id": names.STUDIES_BY_PATIENT_ID_PREFIX,
    "accession_number": names.STUDIES_BY_ACCESSION_PREFIX,
    "institution_name": names.STUDIES_BY_INSTITUTION_PREFIX,
}
SERIES_ATTRIBUTES = (
    "series_description",
    "series_number",
    "performed_procedure_step_start_date",
    "performed_procedure_step_start_time",
)
INSTANCE_ATTRIBUTES = ("instance_number", "rows", "columns", "bits_allocated", "number_of_frames")
STUDY_ATTRIBUTES = tuple(
    f for f in StudyKeys.model_fields if f not in SERIES_ATTRIBUTES + INSTANCE_ATTRIBUTES
)

# Un-index one upload. KEYS: study-of-upload, by-date, by-name, by-update. ARGV: upload id,
# now, the prefixes of study, uploads, series, instances, modalities keys and of modality sets,
# of series hashes, series instances and instance hashes, then for each exact index its hash
# field and set prefix. Returns what it removed.
_UNINDEX = r"""
local study = redis.call('HGET', KEYS[1], ARGV[1])
if not study then return {} end
redis.call('HDEL', KEYS[1], ARGV[1])
local h, uploads = ARGV[3] .. study, ARGV[4] .. study
local series, sops, mods = ARGV[5] .. study, ARGV[6] .. study, ARGV[7] .. study
local entry = redis.call('HGET', uploads, ARGV[1])
if entry then
  redis.call('HDEL', uploads, ARGV[1])
  local s, i, m = string.match(entry, '^([^\t]*)\t([^\t]*)\t(.*)$')
  local sh, si = ARGV[9] .. s, ARGV[10] .. s
  if redis.call('HINCRBY', si, i, -1) <= 0 then redis.call('HDEL', si, i) end
  if redis.call('HINCRBY', series, s, -1) <= 0 then
    redis.call('HDEL', series, s)
    redis.call('DEL', sh, si)
  elseif redis.call('EXISTS', sh) == 1 then  -- (not for an upload indexed before series were)
    redis.call('HSET', sh, 'instance_count', redis.call('HLEN', si), 'updated_at', ARGV[2])
  end
  if redis.call('HINCRBY', sops, i, -1) <= 0 then
    redis.call('HDEL', sops, i)
    redis.call('DEL', ARGV[11] .. i)
  end
  if m ~= '' and redis.call('HINCRBY', mods, m, -1) <= 0 then
    redis.call('HDEL', mods, m)
    redis.call('SREM', ARGV[8] .. m, study)
  end
end
if redis.call('HLEN', uploads) > 0 then
  local modalities = redis.call('HKEYS', mods)
  table.sort(modalities)
  redis.call('HSET', h, 'modalities', table.concat(modalities, ','),
    'series_count', redis.call('HLEN', series), 'instance_count', redis.call('HLEN', sops),
    'updated_at', ARGV[2])
  redis.call('ZADD', KEYS[4], ARGV[2], study)
  return {'search index entry'}
end
for j = 12, #ARGV - 1, 2 do
  local v = redis.call('HGET', h, ARGV[j])
  if v then redis.call('SREM', ARGV[j + 1] .. v, study) end
end
local name = redis.call('HGET', h, 'ix:patient_name')
if name then redis.call('ZREM', KEYS[3], name .. '\0' .. study) end
for _, m in ipairs(redis.call('HKEYS', mods)) do redis.call('SREM', ARGV[8] .. m, study) end
redis.call('ZREM', KEYS[2], study)
redis.call('ZREM', KEYS[4], study)
redis.call('DEL', h, uploads, series, sops, mods)
return {'search index entry', 'study search record'}
"""

_UNINDEX_SCRIPT = Lua(_UNINDEX)


# ---- normalising values, the same way for indexing and for queries ----


def name_key(value: str) -> str:
    """A patient name as indexed: trimmed, upper-case, ``^`` and spaces kept, trailing empty
    components dropped (``Doe^Jane^^`` is ``DOE^JANE``)."""
    groups = value.replace("\x00", "").strip().upper().split("=")
    return "=".join(g.rstrip("^ ") for g in groups).rstrip("=")


def exact_key(value: str) -> str:
    """A patient id, accession number or institution as matched: trimmed and case-folded."""
    return value.replace("\x00", "").strip().casefold()


def value_digest(value: str) -> str:
    return hashlib.blake2b(value.encode(), digest_size=16).hexdigest()


def modality_key(value: str) -> str:
    return value.replace("\x00", "").strip().upper()


def date_score(study_date: str | None, study_time: str | None = None) -> int:
    """``YYYYMMDDhhmmss`` as an int, 0 when the date is missing or not a date; an unreadable
    time counts as midnight."""
    day = yyyymmdd(study_date)
    if day is None:
        return 0
    clock = (study_time or "").split(".")[0].replace(":", "").strip()
    if not (clock.isascii() and clock.isdigit() and len(clock) <= 6):
        clock = ""
    return int(day) * 1_000_000 + int(clock.ljust(6, "0") or 0)


def yyyymmdd(value: str | None) -> str | None:
    """YYYYMMDD for a valid date given as YYYYMMDD or YYYY-MM-DD, else None."""
    text = (value or "").strip()
    if len(text) == 10 and text[4] == text[7] == "-":
        text = text.replace("-", "")
    if not (len(text) == 8 and text.isascii() and text.isdigit()):
        return None
    try:
        date(int(text[:4]), int(text[4:6]), int(text[6:]))
    except ValueError:
        return None
    return text


# ---- writing ----


async def queue_unindex(
    client: Redis | Pipeline, upload_id: UUID | str, *, now: float | None = None
) -> None:
    """Queue ``unindex`` on a pipeline (or run it), e.g. beside the deletion of a job record."""
    keys = [
        names.STUDY_OF_UPLOAD,
        names.STUDIES_BY_DATE,
        names.STUDIES_BY_PATIENT_NAME,
        names.STUDIES_BY_UPDATE,
    ]
    args: list[str | float] = [
        str(upload_id),
        now if now is not None else datetime.now(UTC).timestamp(),
        names.STUDY_PREFIX,
        names.STUDY_UPLOADS_PREFIX,
        names.STUDY_SERIES_PREFIX,
        names.STUDY_INSTANCES_PREFIX,
        names.STUDY_MODALITIES_PREFIX,
        names.STUDIES_BY_MODALITY_PREFIX,
        names.SERIES_PREFIX,
        names.SERIES_INSTANCES_PREFIX,
        names.SOP_INSTANCE_PREFIX,
    ]
    for field, prefix in EXACT_INDEXES.items():
        args += [f"ix:{field}", prefix]
    await _UNINDEX_SCRIPT(keys=keys, args=args, client=client)


async def unindex(redis: Redis, upload_id: UUID | str) -> list[str]:
    """Remove one upload from the index; when its study has no upload left, the study goes
    from every index. What it removed: [] when the upload was not indexed (so it is safe to
    run again), ``["search index entry"]``, or that and ``"study search record"``."""
    async with redis.pipeline(transaction=False) as pipe:
        await queue_unindex(pipe, upload_id)
        [removed] = await pipe.execute()
    return list(removed)
