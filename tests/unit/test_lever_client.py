"""LeverClient against a small fake Lever (httpx.MockTransport) and the real sample payloads."""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from pylever.clients.lever import LeverClient, Opportunity, Stage
from pylever.contracts.errors import (
    AuthError,
    NotFoundError,
    PermanentApiError,
    RetryableApiError,
    UnknownStageError,
)

BASE = "https://lever.test/v1"


# Real Lever payloads (sources in fixtures/lever-samples/SOURCES.md).
SAMPLES = Path(__file__).resolve().parents[1] / "fixtures" / "lever-samples"


def sample(name: str) -> Any:
    return json.loads((SAMPLES / name).read_text())


LIST_SAMPLE = "opportunities-list.amp-labs.sandbox.json"
UPDATE_SAMPLE = "opportunity-stage-update-response.nango.json"
STAGES_SAMPLE = "stages-list.opensdks.sandbox.json"

# The real ``next`` of the list sample: already percent-encoded.
SAMPLE_NEXT = "%5B1%2C1750233409740%2C%2248dd4e94-fea0-4f9a-be5f-95b1853cbbbe%22%5D"
# A second token whose %2B / %26 / %25 would change meaning if decoded and re-encoded.
SECOND_NEXT = "%5B2%2C%22a%2Bb%26c%25d%22%5D"


@pytest.fixture
def key() -> str:
    # One key per test: every client of a (base URL, key) shares one token bucket.
    return f"lever-key-{uuid.uuid4().hex}"


class FakeLever:
    """Just enough of Lever: stages, opportunities, writes, pagination with opaque tokens."""

    def __init__(self, page_size: int = 1) -> None:
        self.page_size = page_size
        self.stages: list[dict[str, str]] = copy.deepcopy(sample(STAGES_SAMPLE)["data"])
        self.opportunities: dict[str, dict[str, Any]] = {}
        self.tokens = [SAMPLE_NEXT, SECOND_NEXT]  # offsets of page 2, 3, ...
        self.requests: list[httpx.Request] = []
        self.answer_override: httpx.Response | None = None

    def add(self, opportunity: dict[str, Any]) -> dict[str, Any]:
        self.opportunities[opportunity["id"]] = copy.deepcopy(opportunity)
        return opportunity

    def hits(self, path: str) -> int:
        return sum(1 for r in self.requests if r.url.path == path)

    def transport(self, delay: float = 0.0) -> httpx.MockTransport:
        async def slow(request: httpx.Request) -> httpx.Response:
            await asyncio.sleep(delay)  # lets concurrent callers interleave
            return self.handle(request)

        return httpx.MockTransport(slow if delay else self.handle)

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.answer_override is not None:
            return self.answer_override
        parts = request.url.path.removeprefix("/v1/").split("/")
        if request.method == "GET" and parts == ["stages"]:
            return self.page(request, self.stages)
        if request.method == "GET" and parts == ["opportunities"]:
            return self.page(request, list(self.opportunities.values()))
        if parts[0] == "opportunities" and len(parts) >= 2:
            opp = self.opportunities.get(parts[1])
            if opp is None:
                return httpx.Response(
                    404, json={"code": "NotFound", "message": "opportunity not found"}
                )
            action = (request.method, "/".join(parts[2:]))
            body = json.loads(request.content) if request.content else {}
            if action == ("GET", ""):
                pass
            elif action == ("POST", "addTags"):
                opp["tags"] += [t for t in body["tags"] if t not in opp["tags"]]
            elif action == ("POST", "removeTags"):
                opp["tags"] = [t for t in opp["tags"] if t not in body["tags"]]
            elif action == ("POST", "addLinks"):
                opp["links"] += body["links"]
            elif action == ("PUT", "stage"):
                opp["stage"] = body["stage"]
                opp["stageChanges"].append({"toStageId": body["stage"], "toStageIndex": None})
            else:
                return httpx.Response(405)
            return httpx.Response(200, json={"data": opp})
        return httpx.Response(404, json={"code": "NotFound", "message": "no such route"})

    def page(self, request: httpx.Request, items: list[Any]) -> httpx.Response:
        # Lever's offset token is opaque: look it up exactly as it arrived in the raw query.
        raw = dict(p.split("=", 1) for p in request.url.query.decode().split("&") if "=" in p)
        offset = raw.get("offset")
        if offset is None:
            index = 0
        elif offset in self.tokens:
            index = self.tokens.index(offset) + 1
        else:
            return httpx.Response(400, json={"code": "BadRequest", "message": "invalid offset"})
        start = index * self.page_size
        chunk = items[start : start + self.page_size]
        body: dict[str, Any] = {"data": chunk, "hasNext": start + self.page_size < len(items)}
        if body["hasNext"]:
            body["next"] = self.tokens[index]
        return httpx.Response(200, json=body)


def client(fake: FakeLever, key: str, **kwargs: Any) -> LeverClient:
    return LeverClient(BASE, key, transport=fake.transport(), **kwargs)


def opportunity(opp_id: str, **fields: Any) -> dict[str, Any]:
    base = copy.deepcopy(sample(LIST_SAMPLE)["data"][0])
    base.update(id=opp_id, **fields)
    return base


# --- auth and errors -------------------------------------------------------------------


async def test_basic_auth_with_key_as_user_and_empty_password(key: str) -> None:
    fake = FakeLever()
    fake.add(opportunity("o1"))
    async with client(fake, key) as lever:
        await lever.get_opportunity("o1")
    expected = "Basic " + base64.b64encode(f"{key}:".encode()).decode()
    assert fake.requests[0].headers["Authorization"] == expected


async def test_401_is_auth_error_sent_once_and_names_no_key(key: str) -> None:
    fake = FakeLever()
    encoded = base64.b64encode(f"{key}:".encode()).decode()
    fake.answer_override = httpx.Response(
        401, json={"code": "Unauthorized", "message": f"bad key {key} / Basic {encoded}"}
    )
    async with client(fake, key) as lever:
        with pytest.raises(AuthError) as info:
            await lever.get_opportunity("o1")
    assert len(fake.requests) == 1
    assert str(info.value).startswith("Lever GET /opportunities/{id} -> 401 Unauthorized: bad key")
    assert key not in str(info.value) and encoded not in str(info.value)
    assert key not in repr(lever)


async def test_404_is_not_found_and_not_retried(key: str) -> None:
    fake = FakeLever()
    async with client(fake, key) as lever:
        with pytest.raises(NotFoundError) as info:
            await lever.get_opportunity("missing-id")
    assert str(info.value) == "Lever GET /opportunities/{id} -> 404 NotFound: opportunity not found"
    assert len(fake.requests) == 1


async def test_503_is_retried_then_succeeds(key: str) -> None:
    fake = FakeLever()
    fake.add(opportunity("o1"))
    answers = [httpx.Response(503), httpx.Response(503)]
    sleeps: list[float] = []

    def flaky(request: httpx.Request) -> httpx.Response:
        return answers.pop(0) if answers else fake.handle(request)

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)

    lever = LeverClient(BASE, key, transport=httpx.MockTransport(flaky), sleep=sleep)
    async with lever:
        assert (await lever.get_opportunity("o1")).id == "o1"
    assert len(sleeps) == 2


async def test_max_attempts_one_raises_at_once(key: str) -> None:
    fake = FakeLever()
    fake.answer_override = httpx.Response(503)
    async with client(fake, key, max_attempts=1) as lever:
        with pytest.raises(RetryableApiError):
            await lever.list_stages()
    assert len(fake.requests) == 1


def test_api_key_is_required() -> None:
    with pytest.raises(ValueError):
        LeverClient(BASE, "")


# --- pagination ------------------------------------------------------------------------


async def test_list_stages_follows_three_pages_sending_next_back_verbatim(key: str) -> None:
    fake = FakeLever(page_size=4)  # 9 stages: 4 + 4 + 1
    async with client(fake, key) as lever:
        stages = await lever.list_stages()
    assert [s.id for s in stages] == [s["id"] for s in sample(STAGES_SAMPLE)["data"]]
    assert [r.url.query for r in fake.requests] == [
        b"",
        f"offset={SAMPLE_NEXT}".encode(),
        f"offset={SECOND_NEXT}".encode(),
    ]


async def test_iter_opportunities_passes_params_and_next_verbatim(key: str) -> None:
    fake = FakeLever(page_size=1)
    for i in range(3):
        fake.add(opportunity(f"o{i}"))
    async with client(fake, key) as lever:
        ids = [
            o.id
            async for o in lever.iter_opportunities(
                stage_id="b7c29827", tag=["Py - Invited", "a&b"], archived=False
            )
        ]
    assert ids == ["o0", "o1", "o2"]
    params = "stage_id=b7c29827&tag=Py%20-%20Invited&tag=a%26b&archived=false"
    assert [r.url.query.decode() for r in fake.requests] == [
        params,
        f"{params}&offset={SAMPLE_NEXT}",
        f"{params}&offset={SECOND_NEXT}",
    ]
    assert all(r.url.path == "/v1/opportunities" for r in fake.requests)


async def test_the_real_sample_page_next_goes_back_unchanged(key: str) -> None:
    first = sample(LIST_SAMPLE)
    seen: list[bytes] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.query)
        if not request.url.query:
            return httpx.Response(200, json=first)
        return httpx.Response(200, json={"data": [], "hasNext": False})

    lever = LeverClient(BASE, key, transport=httpx.MockTransport(handler))
    async with lever:
        opps = [o async for o in lever.iter_opportunities()]
    assert [o.id for o in opps] == ["2087af84-f146-4535-9368-2309e33e049f"]
    assert seen == [b"", b"offset=" + first["next"].encode()]


async def test_a_caller_supplied_offset_is_sent_verbatim_too(key: str) -> None:
    fake = FakeLever(page_size=1)
    for i in range(3):
        fake.add(opportunity(f"o{i}"))
    async with client(fake, key) as lever:
        ids = [o.id async for o in lever.iter_opportunities(offset=SAMPLE_NEXT)]
    assert ids == ["o1", "o2"]
    assert fake.requests[0].url.query == f"offset={SAMPLE_NEXT}".encode()


# --- writes ----------------------------------------------------------------------------


async def test_write_methods_send_lever_bodies_and_return_the_opportunity(key: str) -> None:
    fake = FakeLever()
    fake.add(opportunity("o1", tags=["Python Basics"], links=[]))
    async with client(fake, key) as lever:
        opp = await lever.add_tags("o1", ["Py - Invited", "Py - Started"])
        assert opp.tags == ["Python Basics", "Py - Invited", "Py - Started"]
        opp = await lever.remove_tags("o1", ("Py - Invited", "Py - Started"))
        assert opp.tags == ["Python Basics"]
        opp = await lever.add_links("o1", ["https://py.example/report/1"])
        assert opp.links == ["https://py.example/report/1"]
        opp = await lever.move_to_stage("o1", "offer")
        assert opp.stage == "offer" and opp.entered_stage("offer")
    sent = [(r.method, r.url.path, json.loads(r.content)) for r in fake.requests]
    assert sent == [
        ("POST", "/v1/opportunities/o1/addTags", {"tags": ["Py - Invited", "Py - Started"]}),
        ("POST", "/v1/opportunities/o1/removeTags", {"tags": ["Py - Invited", "Py - Started"]}),
        ("POST", "/v1/opportunities/o1/addLinks", {"links": ["https://py.example/report/1"]}),
        ("PUT", "/v1/opportunities/o1/stage", {"stage": "offer"}),
    ]


async def test_ids_are_quoted_into_the_path(key: str) -> None:
    fake = FakeLever()
    async with client(fake, key) as lever:
        with pytest.raises(NotFoundError):
            await lever.get_opportunity("a/../b?x=1")
    assert fake.requests[0].url.raw_path == b"/v1/opportunities/a%2F..%2Fb%3Fx%3D1"


async def test_unexpected_opportunity_shape_is_permanent(key: str) -> None:
    fake = FakeLever()
    fake.answer_override = httpx.Response(200, json={"data": {"name": "no id"}})
    async with client(fake, key) as lever:
        with pytest.raises(PermanentApiError) as info:
            await lever.get_opportunity("o1")
    assert "unexpected Opportunity: id: Field required" in str(info.value)
    assert len(fake.requests) == 1


# --- stages ----------------------------------------------------------------------------


async def test_resolve_stage_by_id_and_by_name(key: str) -> None:
    fake = FakeLever(page_size=100)
    async with client(fake, key) as lever:
        assert lever.stage_name("offer") is None  # nothing cached yet, and no request
        assert fake.requests == []
        assert await lever.resolve_stage("offer") == "offer"
        assert await lever.resolve_stage("lead-new") == "lead-new"
        assert await lever.resolve_stage("Phone screen") == "b7c29827-5a7b-454e-9b2d-1a18dcbebfd3"
        assert lever.stage_name("d09b0083-b7d4-4f86-8d90-d1532e53a3bb") == "On-site interview"
        assert lever.stage_name("nope") is None
    assert fake.hits("/v1/stages") == 1  # cached


async def test_an_id_wins_over_a_stage_named_like_it(key: str) -> None:
    fake = FakeLever(page_size=100)
    fake.stages = [{"id": "s1", "text": "s2"}, {"id": "s2", "text": "Two"}]
    async with client(fake, key) as lever:
        assert await lever.resolve_stage("s2") == "s2"
        assert await lever.resolve_stage("Two") == "s2"


async def test_names_match_exactly(key: str) -> None:
    fake = FakeLever(page_size=100)
    async with client(fake, key) as lever:
        for near_miss in ("phone screen", "Phone screen ", "Phone"):
            with pytest.raises(UnknownStageError):
                await lever.resolve_stage(near_miss)


async def test_unknown_stage_error_names_the_stage(key: str) -> None:
    fake = FakeLever(page_size=100)
    async with client(fake, key) as lever:
        with pytest.raises(UnknownStageError) as info:
            await lever.resolve_stage("Py Assessment")
        with pytest.raises(UnknownStageError):
            await lever.resolve_stage("Py Assessment")
    assert isinstance(info.value, PermanentApiError)
    assert "'Py Assessment'" in str(info.value)
    # the first load was fresh, so neither miss refreshed within the interval
    assert fake.hits("/v1/stages") == 1


async def test_a_miss_refreshes_and_picks_up_a_new_stage(key: str) -> None:
    fake = FakeLever(page_size=100)
    async with client(fake, key, stage_refresh_interval=0) as lever:
        assert await lever.resolve_stage("Phone screen")
        fake.stages.append({"id": "new-stage-id", "text": "Py Assessment"})
        assert await lever.resolve_stage("Py Assessment") == "new-stage-id"
        assert lever.stage_name("new-stage-id") == "Py Assessment"
    assert fake.hits("/v1/stages") == 2


async def test_refresh_on_a_miss_happens_at_most_once_per_interval(key: str) -> None:
    fake = FakeLever(page_size=100)
    async with client(fake, key, stage_refresh_interval=0.2) as lever:
        await lever.resolve_stage("Offer")
        fake.stages.append({"id": "new-stage-id", "text": "Py Assessment"})
        with pytest.raises(UnknownStageError):
            await lever.resolve_stage("Py Assessment")  # cache too fresh to refresh
        assert fake.hits("/v1/stages") == 1
        await asyncio.sleep(0.25)
        assert await lever.resolve_stage("Py Assessment") == "new-stage-id"
        assert fake.hits("/v1/stages") == 2
        assert await lever.resolve_stage("Offer") == "offer"  # hits need no refresh
        assert fake.hits("/v1/stages") == 2


async def test_concurrent_cold_lookups_load_the_stages_once(key: str) -> None:
    fake = FakeLever(page_size=100)
    async with LeverClient(BASE, key, transport=fake.transport(delay=0.01)) as lever:
        ids = await asyncio.gather(*[lever.resolve_stage("Offer") for _ in range(10)])
    assert ids == ["offer"] * 10
    assert fake.hits("/v1/stages") == 1


# --- models and the real samples -------------------------------------------------------


def test_every_lever_sample_with_opportunities_or_stages_parses() -> None:
    parsed_files = 0
    for path in sorted(SAMPLES.glob("*.json")):
        data = json.loads(path.read_text()).get("data")
        items = data if isinstance(data, list) else [data]
        if path.name.startswith("stages"):
            stages = [Stage.model_validate(item) for item in items]
            assert stages and all(s.id and s.text for s in stages)
            parsed_files += 1
        elif path.name.startswith("opportunit") or (
            isinstance(items[0], dict) and "stageChanges" in items[0]
        ):
            opps = [Opportunity.model_validate(item) for item in items]
            assert opps and all(o.id and o.stageChanges for o in opps)
            parsed_files += 1
    assert parsed_files == 3


def test_archived_sample_with_empty_name_and_no_email() -> None:
    opp = Opportunity.model_validate(sample(UPDATE_SAMPLE)["data"])
    assert opp.id == "1bd11d54-9d97-444a-a4e3-1cd56ceedbc5"
    assert opp.name == ""
    assert opp.is_archived
    assert opp.archived is not None
    assert opp.archived.reason == "d35867b1-f661-4ec2-b477-b3e6524cc8b6"
    assert opp.archived.archivedAt == 1732451503446
    assert opp.tags == ["tag me", "another tag"]
    assert opp.primary_email is None
    assert opp.stage == "2ca03d97-d4f2-4a97-89de-96c8b0d07924"
    assert opp.entered_stage("2ca03d97-d4f2-4a97-89de-96c8b0d07924")
    assert opp.entered_stage("lead-new")
    assert not opp.entered_stage("offer")
    assert [c.toStageIndex for c in opp.stageChanges] == [0, 5]


def test_list_sample_opportunity() -> None:
    opp = Opportunity.model_validate(sample(LIST_SAMPLE)["data"][0])
    assert opp.name == "karan"
    assert not opp.is_archived
    assert opp.stage == "lead-new"
    assert "Go tech" in opp.tags
    assert opp.stageChanges[0].userId == "2c713392-d0e4-4355-8673-378d6a851cb8"
    assert opp.stageChanges[0].updatedAt == 1750233426190


def test_opportunity_tolerates_missing_and_null_fields() -> None:
    opp = Opportunity.model_validate(
        {"id": "o", "name": None, "emails": None, "tags": None, "stage": {"id": "s", "text": "S"}}
    )
    assert (opp.name, opp.emails, opp.tags, opp.links, opp.stageChanges) == ("", [], [], [], [])
    assert opp.stage == "s"
    assert opp.archived is None and not opp.is_archived
    minimal = Opportunity.model_validate({"id": "o"})
    assert minimal.stage is None and minimal.primary_email is None


def test_primary_email_is_the_first_non_empty_one() -> None:
    opp = Opportunity.model_validate({"id": "o", "emails": ["", "  ", " jane@example.com ", "b@x"]})
    assert opp.primary_email == "jane@example.com"


def test_opportunity_repr_hides_candidate_name_and_email() -> None:
    opp = Opportunity.model_validate(
        {"id": "o", "name": "Jane Doe", "emails": ["jane@example.com"]}
    )
    for text in (repr(opp), str(opp)):
        assert "jane@example.com" not in text and "Jane Doe" not in text
    assert "id='o'" in repr(opp)
