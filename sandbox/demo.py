"""Push demo candidates through the sandboxes of ``make run``.

    .venv/bin/python -m sandbox.demo            # the whole tour
    .venv/bin/python -m sandbox.demo --fast     # skip the expiry wait

Each step acts as a recruiter in Lever (sandbox control endpoints) or as a
candidate at Py, then prints the candidate's tags as Lever shows them. The recruiter
also adds two command tags (issue 15): ``Py - Resend`` (Py reminds the candidate, the
tag goes) and ``Py - Retake`` (a new invitation for the same test; its verdict replaces
the earlier one). config/demo.toml looks for them every 2 s (``commands_every``).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

import httpx

LEVER = "http://127.0.0.1:8101"
PY = "http://127.0.0.1:8102"


class Demo:
    def __init__(self, client: httpx.AsyncClient, lever: str, py: str) -> None:
        self.http = client
        self.lever = lever
        self.py = py

    async def candidate(self, name: str, email: str | None, tags: list[str]) -> str:
        r = await self.http.post(
            f"{self.lever}/_sandbox/candidates",
            json={"name": name, "emails": [email] if email else [], "tags": tags},
        )
        r.raise_for_status()
        return r.json()["id"]

    async def move(self, opportunity_id: str, stage: str) -> dict:
        r = await self.http.post(
            f"{self.lever}/_sandbox/candidates/{opportunity_id}/stage", json={"stage": stage}
        )
        r.raise_for_status()
        return r.json()["webhook"]

    async def tags(self, opportunity_id: str) -> list[str]:
        r = await self.http.get(f"{self.lever}/_sandbox/candidates/{opportunity_id}")
        r.raise_for_status()
        return r.json()["tags"]

    async def wait_tag(self, opportunity_id: str, tag: str, within: float = 30) -> list[str]:
        deadline = time.monotonic() + within
        while True:
            tags = await self.tags(opportunity_id)
            if tag in tags or time.monotonic() > deadline:
                return tags
            await asyncio.sleep(0.5)

    async def add_tags(self, opportunity_id: str, tags: list[str]) -> list[str]:
        """The recruiter adds tags in Lever's UI (Lever sends no webhook for that)."""
        r = await self.http.post(
            f"{self.lever}/_sandbox/candidates/{opportunity_id}/tags", json={"add": tags}
        )
        r.raise_for_status()
        return r.json()["tags"]

    async def wait_tags(
        self, opportunity_id: str, present: list[str], absent: list[str], within: float = 30
    ) -> list[str]:
        """The candidate's tags once ``present`` are there and ``absent`` gone (or at the deadline)."""
        deadline = time.monotonic() + within
        while True:
            tags = await self.tags(opportunity_id)
            done = all(t in tags for t in present) and not any(t in tags for t in absent)
            if done or time.monotonic() > deadline:
                return tags
            await asyncio.sleep(0.5)

    async def wait_report(self, opportunity_id: str, within: float = 30) -> list[str]:
        """The links on the candidate in Lever once Py's report link is among them."""
        deadline = time.monotonic() + within
        while True:
            r = await self.http.get(f"{self.lever}/_sandbox/candidates/{opportunity_id}")
            r.raise_for_status()
            links = r.json().get("links", [])
            if any("/reports/" in link for link in links) or time.monotonic() > deadline:
                return links
            await asyncio.sleep(0.5)

    async def invitations_of(self, opportunity_id: str, count: int, within: float = 30) -> list:
        """The candidate's invitations at Py, oldest first, once there are ``count``."""
        deadline = time.monotonic() + within
        while True:
            r = await self.http.get(f"{self.py}/_sandbox/invitations")
            r.raise_for_status()
            found = [i for i in r.json() if f":{opportunity_id}:" in i["reference"]]
            if len(found) >= count:
                return found
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"{len(found)} invitation(s) for {opportunity_id} after {within:.0f}s, "
                    f"not {count}"
                )
            await asyncio.sleep(0.5)

    async def invitation_for(self, opportunity_id: str, within: float = 30) -> dict:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            r = await self.http.get(f"{self.py}/_sandbox/invitations")
            r.raise_for_status()
            for inv in r.json():
                if f":{opportunity_id}:" in inv["reference"]:
                    return inv
            await asyncio.sleep(0.5)
        raise RuntimeError(f"no invitation for {opportunity_id} after {within:.0f}s")

    async def wait_reminders(self, opportunity_id: str, count: int, within: float = 60) -> dict:
        """The candidate's invitation once Py has sent ``count`` reminders (or at the deadline)."""
        deadline = time.monotonic() + within
        while True:
            invitation = await self.invitation_for(opportunity_id)
            if invitation.get("reminders", 0) >= count or time.monotonic() > deadline:
                return invitation
            await asyncio.sleep(0.5)

    async def complete(self, invitation_id: str, score: float) -> None:
        r = await self.http.post(
            f"{self.py}/_sandbox/invitations/{invitation_id}/complete", json={"score": score}
        )
        r.raise_for_status()


def show(label: str, tags: list[str]) -> None:
    py_tags = [t for t in tags if t.startswith("Py - ")]
    print(f"  {label:<44} {', '.join(py_tags) or '(no Py tag)'}", flush=True)


async def tour(demo: Demo, fast: bool) -> None:
    print(
        "1. Ada enters 'Py Assessment' (default test Python Basics), lost the email: the "
        "recruiter resends it; she scores 92 -> Pass"
    )
    ada = await demo.candidate("Ada Lovelace", "ada@example.com", [])
    hook = await demo.move(ada, "Py Assessment")
    print(f"   webhook answered {hook['status']} {hook['body']}")
    show("after the webhook", await demo.wait_tag(ada, "Py - Invited"))
    invitation = await demo.invitation_for(ada)
    print("   the recruiter adds the tag 'Py - Resend' to Ada in Lever ...", flush=True)
    show("the recruiter's tag", await demo.add_tags(ada, ["Py - Resend"]))
    invitation = await demo.wait_reminders(ada, 1, within=30)
    tags = await demo.wait_tags(ada, [], ["Py - Resend"])
    gone = "removed" if "Py - Resend" not in tags else "still there"
    print(
        f"   resend: Py reminded Ada (reminders sent: {invitation['reminders']}); "
        f"the tag 'Py - Resend' is {gone}"
    )
    show("after the resend", tags)
    await demo.complete(invitation["id"], 92)
    show("after Py's result", await demo.wait_tag(ada, "Py - Pass"))

    print(
        "2. Linus has the tag 'Algorithms' (a Py test name): it overrides the default; 55 -> Needs Review;"
        "\n   his connection dropped: the recruiter has him retake the test; 85 -> Pass"
    )
    linus = await demo.candidate("Linus Torvalds", "linus@example.com", ["Algorithms"])
    await demo.move(linus, "Py Assessment")
    await demo.wait_tag(linus, "Py - Invited")
    invitation = await demo.invitation_for(linus)
    print(f"   invitation for test {invitation['test_id']}")
    await demo.complete(invitation["id"], 55)
    show("after Py's result", await demo.wait_tag(linus, "Py - Needs Review"))
    await demo.wait_report(linus)  # the recruiter reads Py's report first
    print("   the recruiter adds the tag 'Py - Retake' to Linus in Lever ...", flush=True)
    show("the recruiter's tag", await demo.add_tags(linus, ["Py - Retake"]))
    first, retake = (await demo.invitations_of(linus, 2))[:2]
    print(
        f"   retake: a new invitation {retake['id']} for test {retake['test_id']} "
        f"(the first, {first['id']}, stays {first['status']})"
    )
    show("after the retake", await demo.wait_tags(linus, ["Py - Invited"], ["Py - Retake"]))
    await demo.complete(retake["id"], 85)
    show(
        "after the retake's result (verdict replaced)",
        await demo.wait_tags(linus, ["Py - Pass"], ["Py - Needs Review", "Py - Invited"]),
    )

    print("3. Grace has no email address")
    grace = await demo.candidate("Grace Hopper", None, [])
    await demo.move(grace, "Py Assessment")
    show("after the webhook", await demo.wait_tag(grace, "Py - Error: No Email"))

    print("4. Edsger enters 'Phone screen', not a trigger stage")
    edsger = await demo.candidate("Edsger Dijkstra", "edsger@example.com", [])
    hook = await demo.move(edsger, "Phone screen")
    print(f"   webhook answered {hook['status']} {hook['body']}")

    print(
        "5. Barbara enters 'Technical Screen' (reminder after 20 s, expiry after 40 s) and never finishes"
    )
    barbara = await demo.candidate("Barbara Liskov", "barbara@example.com", [])
    await demo.move(barbara, "Technical Screen")
    show("after the webhook", await demo.wait_tag(barbara, "Py - Invited"))
    if fast:
        print("   (--fast: not waiting for the expiry)")
    else:
        print("   waiting about 20 s for the reminder ...", flush=True)
        invitation = await demo.wait_reminders(barbara, 1)
        print(
            f"   Py invitation: status {invitation['status']}, reminders sent: "
            f"{invitation['reminders']}"
        )
        print("   waiting about 20 s more for the expiry ...", flush=True)
        show("after expire_after", await demo.wait_tag(barbara, "Py - Expired", within=90))
        invitation = await demo.invitation_for(barbara)
        print(
            f"   Py invitation: status {invitation['status']}, reminders sent: "
            f"{invitation['reminders']}"
        )
    print("\nOpen the Temporal UI at http://127.0.0.1:8233 to see every assessment.")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lever", default=LEVER)
    parser.add_argument("--py", default=PY)
    parser.add_argument("--fast", action="store_true")
    args = parser.parse_args()

    async def run() -> None:
        async with httpx.AsyncClient(timeout=30) as client:
            await tour(Demo(client, args.lever, args.py), args.fast)

    try:
        asyncio.run(run())
    except httpx.HTTPError as exc:
        print(f"demo: cannot reach the sandboxes ({exc}); is `make run` running?", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
