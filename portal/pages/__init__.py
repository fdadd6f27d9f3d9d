"""The program-manager pages: thin views over ``portal.selectors`` (read-only queries)."""
