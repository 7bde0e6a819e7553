"""The dashboard's HTTP routes: ``/dashboard`` (live figures), ``/dashboard/tune`` (the frontier;
push another point or roll back), ``/dashboard/login``.

Who may look: an admin key, as everywhere in the admin API — a ``Bearer`` header, or a session
cookie a browser gets by posting the key to the login form (an HMAC of the key, HttpOnly,
SameSite=Strict, scoped to ``/dashboard``). A POST from another origin is refused (the cookie
would not be sent anyway; this is the second lock). A push takes the path of ``ladder policy
push`` (``LivePolicy.push``: the same validation, published to every replica).
"""

from __future__ import annotations

import hmac
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, quote, urlsplit

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from ladder.errors import PolicyFileError
from ladder.serving.dashboard import COOKIE, dashboard_page, figures, login_page, samples, session_token, tune_page
from ladder.serving.live_policy import PolicyFiles

if TYPE_CHECKING:
    from collections.abc import Callable

    from ladder.serving.gateway import Gateway


def signed_in(gw: Gateway, request: Request) -> bool:
    """An admin key as the Bearer token (the admin API's check), or the session cookie of one."""
    cookie = request.cookies.get(COOKIE, "").encode()
    return gw.is_admin(request) or any([hmac.compare_digest(cookie, session_token(k).encode()) for k in gw.admin_keys])


def _same_origin(request: Request) -> bool:
    origin = request.headers.get("origin")  # browsers send it with every POST ("null" when hidden)
    return origin is None or urlsplit(origin).netloc == request.headers.get("host")


async def _form(request: Request) -> dict[str, str]:
    body = (await request.body())[:4096].decode("utf-8", "replace")
    return {k: v[0] for k, v in parse_qs(body).items()}


def point_policy(policy: Any, index: int) -> Any:  # noqa: ANN401 (HybridRouterPolicy)
    """The live policy moved to its frontier point ``index`` (cheapest first), as a new version."""
    from ladder.policies.operating_points import at_point, frontier

    points = frontier(policy)
    if not 0 <= index < len(points):
        raise PolicyFileError(f"no frontier point {index} (the policy has {len(points)})")
    point = points[index]
    moved = at_point(policy, point)
    if moved is policy:
        return policy
    meta = {k: v for k, v in policy.meta.items() if k != "prefix"}  # another point keeps no prefix gates
    meta |= {"operating_point": point.row, "target": f"frontier point {index} (dashboard)"}
    return replace(moved, meta=meta)


def policy_files(policy: Any) -> PolicyFiles:  # noqa: ANN401
    from ladder.policies.store import policy_files, save_policy

    with tempfile.TemporaryDirectory(prefix="ladder-push-") as tmp:
        return PolicyFiles(*policy_files(save_policy(policy, Path(tmp) / "policy.json")))


def _admin_off() -> Response:
    return HTMLResponse(login_page("The admin API is off: no admin key is configured."), 403)


def add_dashboard_routes(api: FastAPI, gateway: Callable[[], Gateway]) -> None:
    def denied(gw: Gateway, request: Request) -> Response | None:
        if not gw.admin_keys:
            return _admin_off()
        if not signed_in(gw, request):
            return HTMLResponse(login_page(), 401)
        return None

    @api.get("/dashboard", include_in_schema=False)
    async def dashboard(request: Request) -> Response:
        gw = gateway()
        if (no := denied(gw, request)) is not None:
            return no
        own = samples(gw.metrics.registry)
        values, scope = await gw.replicas.gather(own)
        fig = figures(values, gw.tier_names)
        gw.board.offer(figures(own, gw.tier_names) if scope.replicas > 1 else fig)  # the history is this replica's
        return HTMLResponse(dashboard_page(gw.board, fig, gw.tier_names, gw.live.info(), scope))

    @api.post("/dashboard/login", include_in_schema=False)
    async def login(request: Request) -> Response:
        gw = gateway()
        if not gw.admin_keys:
            return _admin_off()
        key = (await _form(request)).get("key", "").encode()
        match = [k for k in gw.admin_keys if hmac.compare_digest(key, k)]
        if not match or not _same_origin(request):
            return HTMLResponse(login_page("That is not an admin key of this app."), 401)
        out = RedirectResponse("/dashboard", status_code=303)
        out.set_cookie(COOKIE, session_token(match[0]), httponly=True, samesite="strict", path="/dashboard")
        return out

    @api.get("/dashboard/tune", include_in_schema=False)
    async def tune(request: Request) -> Response:
        from ladder.policies.operating_points import FrontierPoint, frontier

        gw = gateway()
        if (no := denied(gw, request)) is not None:
            return no
        await gw.live.refresh()
        policy = gw.policy
        own = (getattr(policy, "meta", {}) or {}).get("operating_point")
        points = frontier(policy)
        current = FrontierPoint.of(own) if own and "reach" in own else None
        rungs = list(getattr(policy, "rungs", gw.tier_names))
        return HTMLResponse(tune_page(points, current, rungs, gw.live.info(), request.query_params.get("done")))

    @api.post("/dashboard/tune", include_in_schema=False)
    async def tune_push(request: Request) -> Response:
        gw = gateway()
        if (no := denied(gw, request)) is not None:
            return no
        if not _same_origin(request):
            return HTMLResponse(login_page("Refused: the form was posted from another origin."), 403)
        form = await _form(request)
        try:
            if form.get("action") == "rollback":
                result = await gw.live.rollback()
                done = f"rolled back to {result['version']}"
            else:
                if form.get("version") != gw.policy.version:
                    raise PolicyFileError("the live policy changed since this page was drawn: look again")
                if not form.get("point", "").isdigit():
                    raise PolicyFileError("choose a point first")
                moved = point_policy(gw.policy, int(form["point"]))
                result = await gw.live.push(policy_files(moved))
                done = f"pushed {result['version']}"
        except PolicyFileError as exc:
            done = f"refused: {exc}"
        return RedirectResponse(f"/dashboard/tune?done={quote(done)}", status_code=303)
