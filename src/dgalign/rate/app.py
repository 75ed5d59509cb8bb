"""`dgalign rate`: the rating web app — server-rendered pages, a little vanilla JS, a JSON API (FastAPI).

Pages: GET / (sign-in, or the rater's current item; method names never reach the page), POST /signin
(form: name or invite token), GET /signout. API (what the page's script calls; also what a test
drives): POST /api/signin {name | token}, GET /api/next, POST /api/rate {assignment_id, sides:
{dimension: left | tie | right}, score_left?, score_right?, note?}, POST /api/skip {assignment_id}.
The rater is a signed cookie. With an access token every request must carry it (header
`Authorization: Bearer T`, cookie, or `?access=T` once, which sets the cookie).
"""

from __future__ import annotations

import hmac
import html
import json
from pathlib import Path
from string import Template
from urllib.parse import parse_qs

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from pydantic import BaseModel, Field

from ..errors import DGAlignError
from .store import Assignment, Store

RATER_COOKIE = "dgalign_rater"
ACCESS_COOKIE = "dgalign_access"
TEMPLATES = {name: Template((Path(__file__).parent / "templates" / f"{name}.html").read_text())
             for name in ("page", "rate", "signin")}
SIDE_LABELS = {"left": "A better", "tie": "tie", "right": "B better"}


class SignIn(BaseModel):
    name: str | None = None
    token: str | None = None


class Rating(BaseModel):
    assignment_id: int
    sides: dict[str, str]
    score_left: int | None = Field(None, ge=1, le=5)
    score_right: int | None = Field(None, ge=1, le=5)
    note: str = Field("", max_length=10_000)


class Skip(BaseModel):
    assignment_id: int


def create_app(store: Store, items: list[int], dimensions: list[str], *, access_token: str | None = None) -> FastAPI:
    """The app over `items` (ids in `store`), one verdict per dimension."""
    app = FastAPI(title="dgalign rate", docs_url=None, redoc_url=None, openapi_url=None)

    @app.middleware("http")
    async def check_access(request: Request, call_next):
        if access_token is None:
            return await call_next(request)
        given = request.query_params.get("access")
        header = request.headers.get("authorization", "")
        for candidate in (given, request.cookies.get(ACCESS_COOKIE), header.removeprefix("Bearer ")):
            if candidate and hmac.compare_digest(candidate, access_token):
                response = await call_next(request)
                if given:
                    response.set_cookie(ACCESS_COOKIE, access_token, httponly=True, samesite="strict")
                return response
        return HTMLResponse("<p>This rating page needs its access token: open it with ?access=TOKEN.</p>", 401)

    @app.exception_handler(DGAlignError)
    async def bad_input(request: Request, err: DGAlignError):
        return JSONResponse({"detail": str(err)}, 400)

    def rater_or_401(request: Request) -> str:
        rater = store.rater_of(request.cookies.get(RATER_COOKIE))
        if rater is None:
            raise HTTPException(401, "sign in first (POST /api/signin with a name or token)")
        return rater

    def signed_in(response: Response, rater: str) -> Response:
        response.set_cookie(RATER_COOKIE, store.cookie(rater), httponly=True, samesite="strict", max_age=90 * 86400)
        return response

    def next_json(rater: str) -> dict:
        done, total = store.progress(rater, items)
        a = store.next_assignment(rater, items)
        body = {"progress": {"done": done, "total": total}, "dimensions": dimensions}
        if a is not None:
            body |= {"assignment_id": a.id, "prompt": a.prompt, "left": a.left, "right": a.right}
        return body

    @app.get("/", response_class=HTMLResponse)
    def index(request: Request):
        rater = store.rater_of(request.cookies.get(RATER_COOKIE))
        if rater is None:
            return TEMPLATES["signin"].substitute(error="")
        done, total = store.progress(rater, items)
        a = store.next_assignment(rater, items)
        body = rate_body(a, dimensions) if a else "<p id='done'>All done: every pair has been rated. Thank you!</p>"
        return TEMPLATES["page"].substitute(progress_text=f"{done} of {total} rated", rater=html.escape(rater),
                                            percent=round(100 * done / max(total, 1)), body=body)

    @app.post("/signin")
    async def signin_form(request: Request):
        form = {k: v[0].strip() for k, v in parse_qs((await request.body()).decode()).items()}
        try:
            rater = store.sign_in(token=form["token"]) if form.get("token") else store.sign_in(name=form.get("name"))
        except DGAlignError as err:
            return HTMLResponse(TEMPLATES["signin"].substitute(error=html.escape(str(err))), 400)
        return signed_in(RedirectResponse("/", 303), rater)

    @app.get("/signout")
    def signout():
        response = RedirectResponse("/", 303)
        response.delete_cookie(RATER_COOKIE)
        return response

    @app.post("/api/signin")
    def api_signin(body: SignIn):
        rater = store.sign_in(token=body.token) if body.token else store.sign_in(name=body.name)
        return signed_in(JSONResponse({"rater": rater}), rater)

    @app.get("/api/next")
    def api_next(request: Request):
        return next_json(rater_or_401(request))

    @app.post("/api/rate")
    def api_rate(body: Rating, request: Request):
        rater = rater_or_401(request)
        if set(body.sides) != set(dimensions):
            raise DGAlignError(f"rate every dimension ({', '.join(dimensions)}), got {', '.join(body.sides) or 'none'}")
        rating_id, duplicate = store.rate(rater, body.assignment_id, body.sides, score_left=body.score_left,
                                          score_right=body.score_right, note=body.note)
        return {"rating_id": rating_id, "duplicate": duplicate}

    @app.post("/api/skip")
    def api_skip(body: Skip, request: Request):
        store.skip(rater_or_401(request), body.assignment_id)
        return {"skipped": body.assignment_id}

    return app


def rate_body(a: Assignment, dimensions: list[str]) -> str:
    """The rating form of one assignment: the prompt, answers A (left) and B (right), a row per dimension."""
    rows = "".join(
        f'<tr data-dim="{html.escape(d)}"><td>{html.escape(d)}</td>'
        + "".join(f'<td><button data-side="{side}">{label}</button></td>' for side, label in SIDE_LABELS.items())
        + "</tr>" for d in dimensions)
    state = json.dumps({"assignment_id": a.id, "dimensions": dimensions}).replace("<", "\\u003c")
    options = '<option value="">–</option>' + "".join(f"<option>{n}</option>" for n in range(1, 6))
    return TEMPLATES["rate"].substitute(prompt=html.escape(a.prompt), left=html.escape(a.left),
                                        right=html.escape(a.right), rows=rows, state=state, options=options)
