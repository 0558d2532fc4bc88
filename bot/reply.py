"""Where a request's messages go: its interaction's webhook while the token lives, else the channel.

A :class:`Reply` works from a live :class:`discord.Interaction` or, after a restart, from
what the journal kept (application id, token, creation time, status message id).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import discord

log = logging.getLogger(__name__)

TOKEN_LIFETIME = 15 * 60.0
TOKEN_MARGIN = 30.0  # an upload must finish before the token dies


def only_user(user_id: int) -> discord.AllowedMentions:
    """Mentions that may ping ``user_id`` and nobody else: never roles, never @everyone."""
    return discord.AllowedMentions(everyone=False, roles=False, users=[discord.Object(user_id)])


@dataclass(eq=False)
class Reply:
    client: discord.Client
    application_id: int
    token: str
    interaction_at: float  # epoch seconds
    user_id: int
    guild_id: int | None
    channel_id: int
    status_message_id: int | None = None
    interaction: discord.Interaction | None = None
    followups: bool = True  # False: tracks are posted in ``channel_id`` (a jam's thread), not as follow-ups

    @classmethod
    def of(cls, interaction: discord.Interaction) -> Reply:
        return cls(
            interaction.client, interaction.application_id, interaction.token,
            interaction.created_at.timestamp(), interaction.user.id, interaction.guild_id,
            interaction.channel_id or 0, interaction=interaction,
        )

    def token_usable(self, margin: float = TOKEN_MARGIN) -> bool:
        return time.time() + margin < self.interaction_at + TOKEN_LIFETIME

    @property
    def webhook(self) -> discord.Webhook:
        if self.interaction is not None:
            return self.interaction.followup
        return discord.Webhook.partial(self.application_id, self.token, client=self.client)

    @property
    def channel(self) -> discord.PartialMessageable:
        return self.client.get_partial_messageable(self.channel_id, guild_id=self.guild_id)

    async def edit_status(self, text: str) -> bool:
        """Edit the status message; returns True when it learnt the message's id (worth saving)."""
        mentions = discord.AllowedMentions.none()
        if self.status_message_id is not None:
            await self.webhook.edit_message(self.status_message_id, content=text, allowed_mentions=mentions)
            return False
        if self.interaction is None:
            return False  # restored without a status message: nothing to edit
        message = await self.interaction.edit_original_response(content=text, allowed_mentions=mentions)
        self.status_message_id = message.id
        return True

    async def tell(self, text: str) -> None:
        """Say ``text`` to the user in the channel, mentioning only them (for when the token is gone)."""
        try:
            await self.channel.send(f"<@{self.user_id}> {text}"[:2000], allowed_mentions=only_user(self.user_id))
        except discord.HTTPException:
            log.warning("could not tell user %s in channel %s", self.user_id, self.channel_id, exc_info=True)
