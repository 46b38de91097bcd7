"""A real permessage-deflate peer for the tests, on Python's `websockets` (and zlib for the
frames a well-behaved library will not send). Modes:

  echo deflate|plain                echo server on 127.0.0.1:0; prints its port
  chat URL COUNT                    client offering deflate as browsers do; sends COUNT chat-like
                                    JSON messages, checks each echo; prints a JSON summary
  raw URL KIND [ARG]                raw client that negotiates deflate, then sends one crafted
                                    message (KIND: bomb SIZE, garbage, rsv1-without-offer) and
                                    prints the close code it gets
  load URL KIND SESSIONS COUNT [hold]
                                    the benchmark's client (bench/): SESSIONS sessions
                                    offering deflate as browsers do echo COUNT messages between
                                    them, one at a time each (KIND: chat, about 125 bytes of
                                    JSON, or json256k, 256 KiB of JSON); prints a JSON summary
                                    with the bytes received on the wire; with hold, keeps the
                                    sessions open until a line arrives on standard input
"""
import asyncio
import base64
import json
import os
import socket
import struct
import sys
import zlib


async def echo(compression):
    from websockets.asyncio.server import serve

    async def handler(ws):
        try:
            async for message in ws:
                await ws.send(message)
        except Exception:
            pass

    comp = "deflate" if compression == "deflate" else None
    async with serve(handler, "127.0.0.1", 0, compression=comp, max_size=16 << 20) as server:
        print(server.sockets[0].getsockname()[1], flush=True)
        await asyncio.Future()


async def chat(url, count):
    from websockets.asyncio.client import connect

    async with connect(url, compression="deflate", max_size=16 << 20) as ws:
        extensions = ws.response.headers.get("Sec-WebSocket-Extensions")
        for i in range(count):
            m = chat_message(i)
            await ws.send(m)
            got = await ws.recv()
            if got != m:
                print(json.dumps({"error": "echo differs", "sent": m, "got": got}))
                return
        print(json.dumps({"extensions": extensions, "echoed": count}))


def chat_message(i):
    return json.dumps({"type": "chat", "room": "general", "user": "user%d" % (i % 17),
                       "text": "message number %d with some words in it" % i,
                       "ts": 1733490000123 + i * 37})


def json_message(i, size=256 << 10):
    """About `size` bytes of JSON records, different for each `i`."""
    records, length, n = [], 2, 0
    while length < size:
        r = json.dumps({"id": i * 100000 + n, "user": "user%d" % ((i + n) % 97),
                        "score": (i * 7919 + n * 104729) % 100000 / 100.0,
                        "active": n % 3 == 0, "tags": ["t%d" % ((n + k) % 23) for k in range(3)]})
        records.append(r)
        length += len(r) + 1
        n += 1
    return "[" + ",".join(records) + "]"


async def load(url, kind, sessions, count, hold):
    import time
    from websockets.asyncio.client import ClientConnection, connect

    wire = [0]

    class Counting(ClientConnection):
        def data_received(self, data):
            wire[0] += len(data)
            super().data_received(data)

    make = chat_message if kind == "chat" else json_message
    conns = await asyncio.gather(*[
        connect(url, compression="deflate", max_size=16 << 20, open_timeout=60,
                ping_interval=None, create_connection=Counting)
        for _ in range(sessions)])
    extensions = conns[0].response.headers.get("Sec-WebSocket-Extensions")
    handshake_bytes = wire[0]
    plain = [0]

    async def run(ws, first, n):
        for i in range(first, first + n):
            m = make(i)
            await ws.send(m)
            got = await ws.recv()
            if got != m:
                raise SystemExit("echo %d differs" % i)
            plain[0] += len(m)

    start = time.monotonic()
    per, extra = divmod(count, sessions)
    jobs, first = [], 0
    for k, ws in enumerate(conns):
        n = per + (1 if k < extra else 0)
        jobs.append(run(ws, first, n))
        first += n
    await asyncio.gather(*jobs)
    print(json.dumps({"extensions": extensions, "echoed": count, "plain_bytes": plain[0],
                      "wire_bytes": wire[0] - handshake_bytes,
                      "seconds": time.monotonic() - start}), flush=True)
    if hold:
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    await asyncio.gather(*[ws.close() for ws in conns])


def raw(url, kind, arg):
    host, port = url.split("//")[1].split("/")[0].split(":")
    s = socket.create_connection((host, int(port)))
    key = base64.b64encode(os.urandom(16)).decode()
    offer = "" if kind == "rsv1-without-offer" else \
        "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
    s.sendall(("GET / HTTP/1.1\r\nHost: %s:%s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: %s\r\n%s\r\n"
               % (host, port, key, offer)).encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += s.recv(1)
    status = int(head.split(b" ")[1])
    ext = [l for l in head.split(b"\r\n") if l.lower().startswith(b"sec-websocket-extensions")]
    if kind == "bomb":
        c = zlib.compressobj(9, zlib.DEFLATED, -15)
        size, chunk = int(arg), b"\0" * (1 << 20)
        payload = b""
        for _ in range(size >> 20):
            payload += c.compress(chunk)
        payload += c.flush(zlib.Z_SYNC_FLUSH)[:-4]
    elif kind == "garbage":
        payload = b"\xff\xff\xff\xff"
    else:
        c = zlib.compressobj(6, zlib.DEFLATED, -15)
        payload = c.compress(b"hello") + c.flush(zlib.Z_SYNC_FLUSH)[:-4]
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    n = len(payload)
    if n < 126:
        header = struct.pack("!BB", 0xC2, 0x80 | n)
    elif n < 65536:
        header = struct.pack("!BBH", 0xC2, 0x80 | 126, n)
    else:
        header = struct.pack("!BBQ", 0xC2, 0x80 | 127, n)
    s.sendall(header + mask + masked)
    s.settimeout(10)
    data = b""
    code = None
    while True:
        try:
            chunk = s.recv(65536)
        except (ConnectionResetError, socket.timeout):
            break
        if not chunk:
            break
        data += chunk
        while len(data) >= 2:
            ln = data[1] & 0x7F
            off = 2
            if ln == 126:
                ln, off = struct.unpack("!H", data[2:4])[0], 4
            elif ln == 127:
                ln, off = struct.unpack("!Q", data[2:10])[0], 10
            if len(data) < off + ln:
                break
            if data[0] & 0x0F == 0x8 and code is None:
                code = struct.unpack("!H", data[off:off + 2])[0] if ln >= 2 else 1005
            data = data[off + ln:]
    print(json.dumps({"status": status, "extensions": [e.decode() for e in ext], "close": code}))


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "echo":
        asyncio.run(echo(sys.argv[2]))
    elif mode == "chat":
        asyncio.run(chat(sys.argv[2], int(sys.argv[3])))
    elif mode == "load":
        asyncio.run(load(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]),
                         len(sys.argv) > 6 and sys.argv[6] == "hold"))
    elif mode == "raw":
        raw(sys.argv[2], sys.argv[3], sys.argv[4] if len(sys.argv) > 4 else None)
