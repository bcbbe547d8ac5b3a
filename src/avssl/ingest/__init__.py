"""Ingest: any pile of videos (files, folders, lists, segment CSVs) -> shards of aligned audio and frames.

``inputs`` (what to read, and the skip records of unreadable inputs), ``run`` (``avssl ingest``: decode, cut
clips, write shards through :mod:`avssl.data.shards`), ``progress`` (resumable per-node progress and the
manifest merge), ``procpool`` (the guarded worker pool that keeps a crashing or stuck decode to one skip; the
embed and classify runners use it too).
"""
