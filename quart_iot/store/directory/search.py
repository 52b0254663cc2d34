"""Fleet search over the directory (blocking; run in worker threads): answers from the search
cache, validated as the list is (the index checked against the directory), brought up to date
from the index's record of the names that changed, each read and evaluated again."""

import threading

from quart_iot.store.directory.files import Directory, Unusable
from quart_iot.store.directory.index import Index
from quart_iot.store.directory.outage import storage_errors
from quart_iot.store.search import Search, SearchCache, Selection

CHECK_EVERY = 64  # documents an evaluation reads between two looks at whether it is abandoned


class Abandoned(Exception):
    """The request that asked for an evaluation went away: it stops."""


class DirectorySearches:
    """The search cache of one directory, and how its answers are made."""

    def __init__(self, directory: Directory, index: Index) -> None:
        self.directory = directory
        self.index = index
        self.cache = SearchCache()

    def answer(self, search: Search, arrived: int) -> bytes | None:
        """The body as of a moment after `arrived` (monotonic ns), from the cache; None when
        the search must be evaluated over every document (asked first, or too far behind)."""
        self.index.check(arrived)
        kept = self.cache.get(search.key)
        if kept is None:
            return None
        generation, changed = self.index.changed_since(kept.version)
        if changed is None:
            return None
        if generation != kept.version:
            entries = [(name[:-5], self._entry(search, name)) for name in sorted(changed)]
            kept = self.cache.keep(search.key, kept.updated(generation, entries))
        return kept.body

    def evaluate(self, search: Search, arrived: int, abandoned: threading.Event) -> bytes:
        """The body from every usable document, read and evaluated; kept in the cache."""
        found = self.answer(search, arrived)  # another request may have evaluated it meanwhile
        if found is not None:
            return found
        generation, names = self.index.usable()
        items = {}
        for count, name in enumerate(names):
            if count % CHECK_EVERY == 0 and abandoned.is_set():
                raise Abandoned
            entry = self._entry(search, name)
            if entry is not None:
                items[name[:-5]] = entry
        return self.cache.keep(search.key, Selection(generation, items)).body

    def _entry(self, search: Search, name: str) -> bytes | None:
        """The entry of one document as it is now (None: not selected, gone, or unusable)."""
        with storage_errors(f"read of {name}", self.index.outage):
            try:
                _, raw = self.directory.read(name)
            except (FileNotFoundError, Unusable):
                return None
        return search.entry_of(name[:-5], raw)
