"""``vqdeploy serve``: the sampling pipeline behind HTTP, with request batching (Starlette + uvicorn),
and the same application on Ray Serve replicas. Imports its extras (``.[serve]``, ``.[ray]``) lazily."""
