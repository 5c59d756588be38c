"""Record & replay: re-run a command with its outbound calls answered from a recording."""
