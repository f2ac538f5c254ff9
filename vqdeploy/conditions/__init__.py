"""Conditioning kinds that own their whole path (input reading, validation, tokens, parity inputs,
picture), so that the dispatch sites call one object instead of testing kind strings.

Only object layouts live here so far (``objects.py``); the image, class, SOS and coordinate kinds
still go through ``runtime/conditions.py`` and the per-site branches.
"""
