"""The engine: the embedding unit over the memory file, bus and open files.

* :mod:`~aiomemmap.engine.engine`: :class:`~aiomemmap.Engine`, one memory
  file with the cache budget, one invalidation bus and a registry of open
  cached files shared by every user of the same object, on one event loop;
* :mod:`~aiomemmap.engine.file_key`: what makes two opens the same object;
* :mod:`~aiomemmap.engine.thread`: :class:`~aiomemmap.EngineThread`, an
  engine on a daemon thread of its own for synchronous code, closed at exit
  and unusable (never hanging) in a forked child;
* :mod:`~aiomemmap.engine.default`: :func:`~aiomemmap.default_engine`, the
  process-wide engine thread of the synchronous helpers.
"""
