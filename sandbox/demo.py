"""Push demo candidates through the sandboxes of ``make run``.

    .venv/bin/python -m sandbox.demo            # the whole tour
    .venv/bin/python -m sandbox.demo --fast     # skip the expiry wait

Each step acts as a recruiter in Lever (sandbox control endpoints) or as a
candidate at Py, then prints the candidate's tags as Lever shows them.
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
    print("1. Ada enters 'Py Assessment' (default test Python Basics), scores 92 -> Pass")
    ada = await demo.candidate("Ada Lovelace", "ada@example.com", [])
    hook = await demo.move(ada, "Py Assessment")
    print(f"   webhook answered {hook['status']} {hook['body']}")
    show("after the webhook", await demo.wait_tag(ada, "Py - Invited"))
    invitation = await demo.invitation_for(ada)
    await demo.complete(invitation["id"], 92)
    show("after Py's result", await demo.wait_tag(ada, "Py - Pass"))

    print(
        "2. Linus has the tag 'Algorithms' (a Py test name): it overrides the default; 55 -> Needs Review"
    )
    linus = await demo.candidate("Linus Torvalds", "linus@example.com", ["Algorithms"])
    await demo.move(linus, "Py Assessment")
    await demo.wait_tag(linus, "Py - Invited")
    invitation = await demo.invitation_for(linus)
    print(f"   invitation for test {invitation['test_id']}")
    await demo.complete(invitation["id"], 55)
    show("after Py's result", await demo.wait_tag(linus, "Py - Needs Review"))

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
