"""The app module imports (FastAPI validates every route's signature at import) and serves the
documented routes. Fast: nothing starts."""


def test_the_app_declares_its_routes():
    from ladder.serving.app import api

    routes = {(r.path, m) for r in api.routes for m in getattr(r, "methods", ())}
    assert {
        ("/v1/chat/completions", "POST"),
        ("/v1/models", "GET"),
        ("/health", "GET"),
        ("/metrics", "GET"),
        ("/admin/policy", "GET"),
        ("/admin/policy", "PUT"),
        ("/admin/policy/rollback", "POST"),
        ("/admin/shadow", "GET"),
        ("/admin/keys", "GET"),
    } <= routes
