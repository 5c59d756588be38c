"""The Parquet store: where every event lands once, and the one place it is read from.

`layout` says where files live, `writer` is the only code that creates or removes them,
`query` is the only code that reads them, `spool` folds the embedded-mode spool in through the
writer, and `compact` merges small files through the writer's atomic protocol.
"""
