#!/usr/bin/env python3
"""Writes the fuzz targets' seed corpora (fuzz/seeds/TARGET/) from the protocol reference's examples
and the seed page: every XML body they show, the frames around them, and the formatted messages.

Run from anywhere: python3 fuzz/make_seeds.py [SHARED_DIR]  (default: ../shared beside the repository).
The generated files are committed; CI uses them as they are and does not need the reference.
"""
import hashlib
import pathlib
import re
import sys

HERE = pathlib.Path(__file__).resolve().parent
SHARED = pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else HERE.parent.parent / "shared"
REFERENCE = (SHARED / "protocol" / "README.md").read_text(encoding="utf-8")
SEED_PAGES = [p.read_text(encoding="utf-8") for p in sorted((SHARED / "seeds").glob("*.txt"))]

# Which command carries which body (client side), for wrapping bodies in frames.
COMMANDS = {
    "connect": ("CNT", "CON"),
    "user": ("ATH", "CON\\USER"),
    "msgr": ("BND", "CON\\MSGR"),
    "ml": ("PUT", "MSGR\\CONTACTS"),
    "subscribe": ("PUT", "MSGR\\SUBSCRIPTIONS"),
    "activeendpoint": ("PUT", "MSGR\\ACTIVEENDPOINT"),
    "presence": ("GET", "MSGR\\PRESENCE"),
    "recentconversations": ("GET", "MSGR\\RECENTCONVERSATIONS"),
    "messagesbyconversation": ("GET", "MSGR\\MESSAGESBYCONVERSATION"),
    "conversations": ("GET", "MSGR\\CONVERSATIONS"),
    "conversation": ("PUT", "MSGR\\CONVERSATION"),
    "thread": ("PUT", "MSGR\\THREAD"),
    "threads": ("GET", "MSGR\\THREADS"),
    "partners": ("PUT", "MSGR\\PARTNERS"),
    "options": ("PUT", "MSGR\\OPTIONS"),
    "networks": ("PUT", "MSGR\\NETWORKS"),
    "reportspam": ("PUT", "MSGR\\REPORTSPAM"),
    "challenge": ("PUT", "MSGR\\CHALLENGE"),
}

OPEN = re.compile(r"<([A-Za-z][\w:-]*)(?:\s[^<>]*)?>")


def balanced(text, start, name):
    """End index of the element named `name` opening at `start`, or None."""
    depth, i = 0, start
    tag = re.compile(r"<(/?)" + re.escape(name) + r"(?=[\s/>])[^<>]*?(/?)>")
    while True:
        m = tag.search(text, i)
        if not m:
            return None
        if m.group(1):
            depth -= 1
        elif not m.group(2):
            depth += 1
        elif depth == 0:
            return m.end()
        if depth == 0:
            return m.end()
        i = m.end()


def xml_snippets(text):
    """Every complete element in `text`, outermost first; code indentation removed."""
    lines = [l[4:] if l.startswith("    ") else l for l in text.splitlines()]
    joined = "\n".join(lines)
    found, pos = [], 0
    while True:
        m = OPEN.search(joined, pos)
        if not m:
            break
        end = balanced(joined, m.start(), m.group(1))
        if end is None:
            pos = m.end()
            continue
        snippet = joined[m.start():end]
        # Markdown prose between two snippets on different lines is not XML.
        if "\n\n" not in snippet:
            found.append(snippet)
        pos = m.end()
    return found


def shorthand_messages(text):
    """The reference writes formatted messages as `A: 1 / B: 2 (blank line) …`; expand them."""
    out, current = [], None
    for line in text.splitlines() + [""]:
        indented = line.startswith("    ")
        body = line.strip()
        if current is not None and (not indented or re.match(r"[CS]\b.*: ", body)):
            out.append(assemble(current))
            current = None
        if current is None:
            if indented and "Routing: 1.0 /" in body:
                current = [body[body.index("Routing: 1.0"):]]
            continue
        current.append(body)
    return out


def assemble(lines):
    """Header lines (blank lines between blocks), then after the third blank line the body."""
    tokens = []
    for line in lines:
        pieces = re.split(r"\(blank line\)", line)
        for i, piece in enumerate(pieces):
            if i:
                tokens.append("")
            tokens.extend(p.strip() for p in piece.split(" / ") if p.strip())
    wire, blanks, body = "", 0, ""
    for t in tokens:
        if blanks >= 3:
            body += t
        elif t == "":
            wire += "\r\n"
            blanks += 1
        else:
            wire += t + "\r\n"
    body_bytes = body.encode()
    wire = wire.replace("Content-Length: n", f"Content-Length: {len(body_bytes)}")
    return wire.encode() + body_bytes


def frame(cmd, trid, target, payload):
    return f"{cmd} {trid} {target} {len(payload)}\r\n".encode() + payload


def write(target, data):
    d = HERE / "seeds" / target
    d.mkdir(parents=True, exist_ok=True)
    (d / hashlib.sha1(data).hexdigest()[:16]).write_bytes(data)


def main():
    snippets = []
    for text in [REFERENCE, *SEED_PAGES]:
        for s in xml_snippets(text):
            if s not in snippets:
                snippets.append(s)
    for s in snippets:
        write("xml", s.encode())

    messages = shorthand_messages(REFERENCE)
    # §3's full example, as the wire carries it.
    section3 = REFERENCE.split("## 3.")[1].split("- `Routing: 1.0`")[0]
    lines = [l.strip() for l in section3.splitlines() if l.startswith("    ")]
    lines = [re.sub(r"\s+\(or .*\)$", "", l).replace("\\r\\n", "") for l in lines]
    messages.append("\r\n".join(lines[lines.index("Routing: 1.0"):]).encode())
    for m in messages:
        write("formatted", b"\r\n" + m)
        write("formatted", b"Registration: abc\r\n\r\n" + m)

    trid = 1
    handshake = b""
    for s in snippets:
        root = OPEN.match(s).group(1)
        if root in COMMANDS:
            cmd, target = COMMANDS[root]
            f = frame(cmd, trid, target, b"\r\n" + s.encode())
            write("frame", f)
            if root in ("connect", "user", "msgr") and trid < 40:
                handshake += f
            trid += 1
    write("frame", handshake)
    for m in messages:
        write("frame", frame("SDG", trid, "MSGR", b"Registration: abc\r\n\r\n" + m))
        trid += 1
    for raw in [
        frame("PNG", 5, "CON", b"Registration: X\r\n"),
        frame("PNG", 6, "CON", b""),
        frame("OUT", 7, "CON", b""),
        frame("ACK", 12, "MSGR", b"Ack-Id: 0000013E745CEE19\r\n\r\n"),
        frame("911", 2, "CON", b"\r\nAuthentication failed"),
        frame("BND", 3, "CON", b"UtcTime: 1426463998\r\nSet-Registration: t\r\nRegistration-Token-Expiry: 1426550398\r\nContext: 1B8D4AA7AD8F8D02\r\n\r\n<msgr-response><ver>2</ver></msgr-response>"),
    ]:
        write("frame", raw)

    addresses = set(re.findall(r"\b(?:1|2|4|8|19|28):[^\s`<>|),]+", REFERENCE))
    addresses |= set(re.findall(r"\{?[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\}?", REFERENCE))
    addresses |= {"alice", "live:alice", "22210219642164014968PROD0090YUAUV{2B"}
    for a in sorted(addresses):
        write("text", a.encode())
    for target in ["frame", "formatted", "xml", "text"]:
        print(target, len(list((HERE / "seeds" / target).iterdir())))


main()
