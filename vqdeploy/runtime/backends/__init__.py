"""Backends: one small runner per runtime behind the same interface (see ``base``)."""
