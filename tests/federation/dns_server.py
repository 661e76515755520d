"""A tiny authoritative DNS server on loopback UDP for federation discovery tests.

Answers from a dict of records that tests may change while it runs; anything absent is
NXDOMAIN. Built on dnspython's message API (parse the query, make the response, add an rrset),
so what the daemon's resolver sees is real DNS on the wire.

    dns = DnsServer()
    port = await nursery.start(dns.serve)
    dns.add_peer("b.test", port=9001, public_key="...")   # SRV + TXT + A
    # daemon config: federation_dns_server=f"127.0.0.1:{port}", federation_insecure_http=True
"""

from __future__ import annotations

import dns.flags
import dns.message
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import trio

Key = tuple[str, str]  # (lower-case name without the final dot, record type)


class DnsServer:
    def __init__(self, ttl: int = 60) -> None:
        self.ttl = ttl
        self.records: dict[Key, list[str]] = {}
        self.queries: list[Key] = []
        self.port = 0

    def set(self, name: str, rdtype: str, *values: str) -> None:
        """Replace the records of one name and type (no values: remove them)."""
        key = (name.lower().rstrip("."), rdtype.upper())
        if values:
            self.records[key] = list(values)
        else:
            self.records.pop(key, None)

    def add_peer(self, domain: str, *, port: int, public_key: str, address: str = "127.0.0.1") -> None:
        """The records a Vox server publishes: SRV to a host name, that name's A, the key TXT."""
        host = f"vox.{domain}"
        self.set(f"_vox._tcp.{domain}", "SRV", f"10 5 {port} {host}.")
        self.set(host, "A", address)
        self.set(f"_vox-key.{domain}", "TXT", f'"v=vox1; k=ed25519; p={public_key}"')

    def answer(self, wire: bytes) -> bytes | None:
        try:
            query = dns.message.from_wire(wire)
        except Exception:
            return None  # not DNS: a real server would drop it too
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        if not query.question:
            response.set_rcode(dns.rcode.FORMERR)
            return response.to_wire()
        question = query.question[0]
        key = (question.name.to_text(omit_final_dot=True).lower(), dns.rdatatype.to_text(question.rdtype))
        self.queries.append(key)
        values = self.records.get(key)
        if values:
            response.answer.append(
                dns.rrset.from_text(question.name, self.ttl, dns.rdataclass.IN, question.rdtype, *values)
            )
        elif not any(name == key[0] for name, _ in self.records):
            response.set_rcode(dns.rcode.NXDOMAIN)
        return response.to_wire()

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
        with sock:
            await sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
            task_status.started(self.port)
            while True:
                wire, peer = await sock.recvfrom(4096)
                reply = self.answer(wire)
                if reply is not None:
                    await sock.sendto(reply, peer)
