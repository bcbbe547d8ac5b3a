"""Shards and batches: the shard format and its storage codecs, and the training stream that reads them.

``shards`` (the one owner of the shard format: samples, manifest, ``ShardWriter``), ``storage`` (audio/frame
codecs), ``shardfile`` (a shard file memory-mapped where that is safe, else read), ``shardset`` (resolving and
checking shard sets), ``stream`` (shards -> ``Batch`` through a DataLoader), ``crops`` (random and fitted crops
of a sample), ``augment`` (per-view augmentation and the batch ``mix``).
Ingest writes through ``shards``; the trainer reads through ``stream``.
"""
