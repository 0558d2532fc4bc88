"""``python -m tests.crashing_bot``: ``python -m bot`` that kills itself (SIGKILL) right after Discord accepted its
first result upload, before the journal records the delivery: the window where a real crash leaves a posted track
journaled as "delivering".

Test-only: it wraps the bot from outside (``bot.pipeline.deliver``), so the bot's own code has no fault points.
"""

from __future__ import annotations

import logging
import os
import signal

from bot import pipeline
from bot.delivery import Delivery, Post
from bot.reply import Reply
from bot.run import main

log = logging.getLogger("tests.crashing_bot")
_deliver = pipeline.deliver


async def deliver_then_die(reply: Reply, post: Post) -> Delivery:
    done = await _deliver(reply, post)
    log.warning("job %s was posted as message %s; SIGKILL before the journal hears of it", post.job_id,
                done.message_id)
    logging.shutdown()  # flush the log: nothing else runs after the signal
    os.kill(os.getpid(), signal.SIGKILL)
    raise AssertionError("still alive after SIGKILL")


if __name__ == "__main__":
    pipeline.deliver = deliver_then_die
    raise SystemExit(main())
