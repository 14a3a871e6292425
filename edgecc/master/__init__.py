"""The master's side: links to N workers, requests sent to all of them, decoded from the first that suffice."""
