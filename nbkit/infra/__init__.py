"""Infrastructure under everything else: the cache, worker processes, progress and cancel, disk space, the run ledger, library versions. Imports nothing of nbkit's but :mod:`nbkit.errors`."""
