"""TraceLab's server side: the ingester that fills the store, and (later) the HTTP API."""
