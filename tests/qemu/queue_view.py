"""The live queue view, end to end: `/api/queues`, the `/queues` page in a
real browser, the `/` page, and the shell's `queues` and `ring`
(kernel/src/net/queue_page.rs, kernel/src/virtio/view.rs,
kernel/src/shell/queues.rs; the schema is in docs/queue-view.md).

One normal boot on q35 (TCG) with a disk, a NIC on QEMU's user network
(echo and HTTP forwarded to the host) and a console on a packed ring,
driven from the host once the NIC has its DHCP lease:

1. `GET /api/queues` is JSON with every device (blk, net, console: each up,
   with its negotiated features by name) and every queue with the stable
   fields; the console's queues are packed (wrap counters, event
   structures), the others split.
2. `GET /` links to `/queues` and lists every device's features (no
   "(see the driver)"); `GET /queues` is HTML with no external resource.
3. Headless Chromium (`browser.py`) loads `/queues` through the port
   forward: the DOM has one `<svg class="queue">` per queue the API lists.
4. Host traffic (the TCP echo, the shell's `blk read`) moves the rings: in a
   second load the network and block queues' indices in the page changed.
5. A screenshot of the page goes to `build/queue-view.png` (the one the
   book shows) and must not be blank.
6. The shell's `queues` prints one line per queue, `ring` draws one ring
   (split and packed), and a wrong name is an error; then `poweroff`.

`x.py test` installs Debian's `chromium` package first when it is missing
(`BROWSER_SCENARIOS` names the scenarios that need it).
"""

from __future__ import annotations

import json
import os
import re
import shutil

from . import browser, net
from . import machine as qm
from .harness import DEFAULT_FORBID, RunContext, Scenario

NAME = "queue-view-browser-q35"
#: Scenarios that need Chromium (x.py installs it before running them).
BROWSER_SCENARIOS = (NAME,)

#: The stable field names of a queue object (issue 16; docs/queue-view.md).
STABLE_QUEUE_FIELDS = ("index", "name", "size", "avail_idx", "used_idx", "last_used_idx", "in_flight",
                       "free_descriptors", "avail_event", "used_event", "notifications", "suppressed",
                       "interrupts", "descriptors")
#: ... and of a device object.
STABLE_DEVICE_FIELDS = ("type", "location", "transport", "ring", "features", "queues")

DHCP_LINE = r"net0: dhcp: address 10\.0\.2\.15/24 gateway 10\.0\.2\.2 dns 10\.0\.2\.3$"
#: One queue drawing in the browser's DOM, with the indices the page shows.
SVG_TAG = re.compile(r"<svg\b[^>]*\bclass=\"queue\"[^>]*>")
SVG_ATTR = re.compile(r"\b(data-[a-z-]+)=\"([^\"]*)\"")
MiB = 1024 * 1024


def expect(condition: bool, problems: list[str], message: str) -> None:
    if not condition:
        problems.append(message)


def devices(ctx: RunContext) -> list[str]:
    """A disk, a NIC with echo and HTTP forwarded, a console on a packed ring."""
    netdev = (f"user,id=n0,hostfwd=tcp:127.0.0.1:{ctx.port('echo')}-:7,"
              f"hostfwd=tcp:127.0.0.1:{ctx.port('http')}-:80")
    return [
        "-drive", f"if=none,id=d0,format=raw,file={ctx.file('disk0.img')}",
        "-device", "virtio-blk-pci,drive=d0,serial=disk0",
        "-netdev", netdev,
        "-device", f"virtio-net-pci,netdev=n0,mac={qm.STANDARD_MAC},romfile=",
        "-chardev", f"socket,id=con,path={ctx.file('console.sock')},server=on,wait=off",
        "-device", "virtio-serial-pci,id=vser0,disable-legacy=on,packed=on",
        "-device", "virtconsole,chardev=con,bus=vser0.0",
    ]  # fmt: skip


def check_api(doc: dict, problems: list[str]) -> int:
    """The `/api/queues` document's shape; returns the number of queues."""
    for key in ("schema", "uptime_ms", "descriptor_states", "devices"):
        expect(key in doc, problems, f"/api/queues: no {key!r}")
    by_type = {d.get("type"): d for d in doc.get("devices", [])}
    expect(set(by_type) == {"blk", "net", "console"}, problems, f"/api/queues: devices {sorted(by_type)}")
    total = 0
    for device in doc.get("devices", []):
        name = f"{device.get('type')} at {device.get('location')}"
        for key in STABLE_DEVICE_FIELDS:
            expect(key in device, problems, f"{name}: no {key!r}")
        expect(str(device.get("state", "")).startswith("up"), problems, f"{name}: state {device.get('state')!r}")
        features = device.get("features") or []
        expect("VERSION_1" in features, problems, f"{name}: features {features}")
        queues = device.get("queues", [])
        expect(len(queues) > 0, problems, f"{name}: no queues")
        total += len(queues)
        for q in queues:
            label = f"{name} queue {q.get('index')} {q.get('name')}"
            for key in STABLE_QUEUE_FIELDS:
                expect(key in q, problems, f"{label}: no {key!r}")
            size = q.get("size", 0)
            expect(len(q.get("descriptors", "")) == min(size, 256), problems,
                   f"{label}: {len(q.get('descriptors', ''))} descriptor states for size {size}")
            expect(set(q.get("descriptors", "")) <= set(doc.get("descriptor_states", {})), problems,
                   f"{label}: unknown descriptor states")
            expect(q.get("free_descriptors", -1) + sum(c != "." for c in q.get("descriptors", "")) >= 0,
                   problems, f"{label}: bad counts")
            packed = device.get("ring") == "packed"
            expect(("packed" in q) == packed and ("split" in q) != packed, problems,
                   f"{label}: layout object does not match ring {device.get('ring')}")
            if packed:
                for key in ("driver_wrap_counter", "device_wrap_counter", "driver_event", "device_event"):
                    expect(key in q["packed"], problems, f"{label}: packed without {key!r}")
    expect(by_type.get("console", {}).get("ring") == "packed", problems, "the console's ring is not packed")
    expect(by_type.get("blk", {}).get("ring") == "split", problems, "the disk's ring is not split")
    expect("BLK_FLUSH" in (by_type.get("blk", {}).get("features") or []), problems, "blk: no BLK_FLUSH")
    return total


def svg_indices(dom: str) -> dict[tuple[str, str, str], tuple[str, str]]:
    """(device, location, queue) -> (avail_idx, used_idx) of each drawing."""
    found = {}
    for tag in SVG_TAG.findall(dom):
        attrs = dict(SVG_ATTR.findall(tag))
        key = (attrs.get("data-device", "?"), attrs.get("data-location", "?"), attrs.get("data-queue", "?"))
        found[key] = (attrs.get("data-avail-idx", "?"), attrs.get("data-used-idx", "?"))
    return found


def session(ctx: RunContext) -> list[str]:
    from .console_session import Shell

    problems: list[str] = []
    http = ctx.port("http")
    page_url = f"http://127.0.0.1:{http}/queues"
    build_dir = ctx.workdir.parent.parent

    shell = Shell(ctx.file("console.sock"))
    try:
        shell.wait_prompt(timeout_s=30)
    except AssertionError:
        shell.type(b"\r", timeout_s=10)  # the banner went out before we listened

    # 1. The API.
    status, headers, body = net.http_get(http, "/api/queues")
    expect(status == 200, problems, f"GET /api/queues: status {status}")
    expect(headers.get("content-type", "").startswith("application/json"), problems,
           f"GET /api/queues: content type {headers.get('content-type')}")
    ctx.file("api-queues.json").write_text(body)
    # The whole document fits the server's 16 KiB send buffer (HTTP_TX_BUFFER in services.rs).
    expect(len(body.encode()) <= 16 * 1024, problems, f"/api/queues is {len(body.encode())} bytes")
    try:
        doc = json.loads(body)
    except ValueError as err:
        return problems + [f"GET /api/queues is not JSON: {err}: {body[:300]!r}"]
    queues = check_api(doc, problems)
    status, _, _ = net.http_get(http, "/api/queues?t=1")
    expect(status == 200, problems, f"GET /api/queues?t=1: status {status} (a query string is ignored)")

    # 2. The status page and the page itself.
    status, _, index = net.http_get(http, "/")
    expect(status == 200 and 'href="/queues"' in index, problems, "GET /: no link to /queues")
    expect("(see the driver)" not in index, problems, "GET /: a device without its features")
    for feature in ("BLK_FLUSH", "NET_MAC", "CONSOLE_EMERG_WRITE", "RING_PACKED"):
        expect(feature in index, problems, f"GET /: {feature} not listed")
    status, headers, page = net.http_get(http, "/queues")
    expect(status == 200 and headers.get("content-type", "").startswith("text/html"), problems,
           f"GET /queues: {status} {headers.get('content-type')}")
    expect(re.search(r"(src|href)=\"?(https?:)?//", page) is None and "url(" not in page, problems,
           "GET /queues: the page loads something from elsewhere")

    # 3. The page in a browser: one drawing per queue.
    dom = browser.dump_dom(page_url)
    ctx.file("queues-before.html").write_text(dom)
    before = svg_indices(dom)
    expect(len(SVG_TAG.findall(dom)) == queues, problems,
           f"the browser drew {len(SVG_TAG.findall(dom))} queues, /api/queues lists {queues}")
    expect("refresh " in dom, problems, "the page never refreshed from /api/queues")

    # 4. Traffic moves the rings.
    data = os.urandom(256 * 1024)
    back, _ = net.echo_round_trip(ctx.port("echo"), data, timeout_s=60.0)
    expect(back == data, problems, f"echo: {len(back)} of {len(data)} bytes came back intact")
    text = shell.run("blk read vda 0 8", timeout_s=30)
    expect("error" not in text, problems, f"blk read: {text[:200]!r}")
    dom = browser.dump_dom(page_url)
    ctx.file("queues-after.html").write_text(dom)
    after = svg_indices(dom)
    for kind in ("net", "blk"):
        moved = [key for key in before if key[0] == kind and after.get(key) not in (None, before[key])]
        expect(bool(moved), problems, f"no {kind} queue's index changed in the page after traffic: "
                                      f"before {before}, after {after}")

    # 5. The screenshot the book shows.
    shot = ctx.file("queue-view.png")
    browser.screenshot(page_url, shot)
    colours = browser.png_colours(shot)
    expect(colours >= 4, problems, f"the screenshot has {colours} colour(s): blank")
    shutil.copyfile(shot, build_dir / "queue-view.png")

    # 6. The shell.
    text = shell.run("queues")
    lines = [line for line in text.splitlines() if line.strip()]
    expect(len(lines) == queues + 1 and lines[0].startswith("device"), problems,
           f"queues: {len(lines)} lines for {queues} queues: {text!r}")
    text = shell.run("ring net transmitq")
    expect("transmitq" in text and "split ring" in text and "avail.idx" in text, problems,
           f"ring net transmitq: {text!r}")
    text = shell.run("ring console 0")
    expect("packed ring" in text and "driver wrap counter" in text, problems, f"ring console 0: {text!r}")
    text = shell.run("ring blk nosuch")
    expect(text.startswith("error: "), problems, f"ring blk nosuch: {text!r}")
    shell.send(b"poweroff\r")
    shell.read_until(b"powering off")
    return problems


def disk_image(path) -> None:
    qm.create_raw_image(path, 1 * MiB)


def scenario() -> Scenario:
    return Scenario(
        name=NAME,
        machine="q35",
        firmware="qboot",
        accel="tcg",
        devices=devices,
        files={"disk0.img": disk_image},
        append="log=info",
        expect_status=qm.EXIT_POWEROFF,
        expect_in_order=[r"^kernel: booting \(PVH\)", r"^kernel: ready$"],
        expect_anywhere=[r"^shell: ready on virtio console port 0 ", DHCP_LINE],
        forbid=[*DEFAULT_FORBID, r"WARN kernel::net"],
        timeout_s=240.0,
        interact=session,
        interact_after=DHCP_LINE,
    )


SCENARIOS: list[Scenario] = [scenario()]
