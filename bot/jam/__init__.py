"""Jams: one shared track per channel, built in turns (``/jam``).

* :mod:`bot.jam.model`: what a jam is (its sections, the sections waiting their turn) and its rules.
* :mod:`bot.jam.store`: where jams live (the bot's SQLite file, or Redis when scaled out).
* :mod:`bot.jam.service`: running them: sections go through the usual pipeline one after another, each
  continuing the codes of the jam's tail; the whole track is spliced and posted in the jam's thread.
* :mod:`bot.jam.render`: the jam's card and messages.
"""
