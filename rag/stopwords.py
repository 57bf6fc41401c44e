"""The one stop-word list: words too common to rank (keyword search), mark (snippets) or count as
support (readers). Dropped only when the query has other words left."""

STOP_WORDS = frozenset(
    "a an and are as at be but by for from had has have he her his i if in into is it its me my no not "
    "of on or our she so such than that the their then there these they this those to was we were what "
    "when where which while who whom why will with would you your does do did can could should how".split()
)
