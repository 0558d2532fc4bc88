"""The job queue and the per-user limits in Redis, for ``REDIS_URL`` (issue 10).

Bots admit jobs; ``jamgen worker`` processes, one model each, take them fairly, report progress
and results, and heartbeat what they hold; a reaper puts back the jobs of workers that died.
Every step that touches more than one key is one Lua script (``lua/``), run atomically.
Nothing here knows about Discord. :class:`RedisJobs` is the API.

Key layout, under a prefix (default ``jamgen:``; ``{model}`` is the model id percent-encoded,
``{member}`` an owner as ``u:<owner>``, or ``anon`` for jobs without one):

==========================  =======  ===========================================================
key                         type     what
==========================  =======  ===========================================================
``job:{id}``                hash     ``request`` (JobRequest JSON), ``model``, ``mtag``, ``member``,
                                     ``akey`` (admission key), ``state`` (queued, running, done,
                                     failed, cancelled), ``attempt`` (1 on the first run),
                                     ``created``/``started``/``ended`` (server time, s),
                                     ``worker`` and ``entry`` while running, ``alone``,
                                     ``reason``, ``progress_done``/``progress_total``/``progress_at``,
                                     ``meta`` (the admitting bot's record: where to post), ``notify``.
                                     Kept ``keep_seconds`` once the job ends.
``lane:{model}:{member}``   list     one owner's waiting jobs of one model, first to start first
``ready:{model}``           zset     owners with waiting jobs of the model: the rotation, scored by
                                     ``seq`` (lowest goes next; a served owner is re-scored to the back;
                                     the owner of a job put back, to the front)
``seq``                     string   the rotation's counter (INCR)
``queued``                  string   waiting jobs, all models (what the queue cap counts)
``active:{key}``            string   a user's jobs queued or running (max_active); gone at 0. Jobs admitted
                                     under one charge (a request for several takes) count it once
``group:{first id}``        string   such jobs still open, counting up from -n; at 0 the charge goes back
``rate:{key}``              string   the user's GCRA time (when their bucket is full again); expires then
``run``                     stream   one entry per run of a job (``job``); group ``workers``: the
                                     entry sits in the holding worker's pending list until settled
``events``                  stream   ``job``, ``kind`` (finished, failed, cancelled), ``reason``
``events:{bot}``            stream   the same, for the jobs admitted by bot process ``{bot}`` (the hash's
                                     ``notify``); group ``bots``, acknowledged once the result is posted
``dead``                    stream   dead-lettered jobs: ``job``, ``attempts``, ``worker``, ``reason``
``result:{id}``             string   a finished job's encoded audio (and its codes, when the request keeps
                                     them: :mod:`~generation.redis.results`), for ``keep_seconds``
``input:{sha256}``          string   an input file's bytes: audio or codes (a request says ``redis-input:<sha256>``
                                     instead of a path), for ``keep_seconds``
``progress:{id}``           channel  progress snapshots as JSON (``job``, ``attempt``, ``done``,
                                     ``total``): pub/sub, lossy; the hash keeps the latest
``worker:{name}``           hash     a live worker (:mod:`~generation.redis.registry`): ``model``, ``rows``,
                                     ``rows_in_use``, ``batching``, ``throughput`` and ``steps_per_second``
                                     (absent until measured), ``jobs_done``, ``jobs_failed``, ``started``,
                                     ``host``, ``pid``, ``seen`` (server time, s). Rewritten every heartbeat;
                                     expires ``reclaim_after`` after the last, deleted on a clean stop
``workers``                 zset     worker names scored by ``seen``; readers drop names whose hash expired
``models``                  zset     every model a worker has served or a job was queued for (raw id),
                                     scored by when a worker was last seen serving it (0: never):
                                     where readers find waiting jobs (``ready:{model}``) without scanning keys
==========================  =======  ===========================================================

The scripts build key names from the prefix, so this needs one Redis (not Redis Cluster).
"""

from generation.redis.jobs import RedisJobs
from generation.redis.keys import DEFAULT_PREFIX, Keys
from generation.redis.limits import DuplicateJob
from generation.redis.records import Event, JobRecord, Lease, Reclaimed

__all__ = ["DEFAULT_PREFIX", "DuplicateJob", "Event", "JobRecord", "Keys", "Lease", "Reclaimed", "RedisJobs"]
